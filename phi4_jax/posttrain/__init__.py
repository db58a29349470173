"""Post-training: the DPO objective (SFT is the next-token loss on loss-masked chat rows)."""
