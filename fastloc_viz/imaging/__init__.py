"""Image input: every file, array or tensor a user has -> pixels and the record of how they were read (the one reader, the one folder walker)."""
