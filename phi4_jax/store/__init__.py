"""Storage, below everything that trains or samples: the workdir layout (workdir), orbax checkpoint
I/O (checkpoint), resumable JSONL logs (jsonl_log) and the one atomic write (atomic)."""
