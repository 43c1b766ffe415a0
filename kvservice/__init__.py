"""kvservice: an in-memory HTTP key-value store with a two-minute write history per key."""
