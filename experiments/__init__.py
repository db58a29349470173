"""Stage configs: `get_config(arg)` files with presets (test, colab, 1b, phi4_14b)."""
