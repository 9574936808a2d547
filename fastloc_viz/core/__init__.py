"""Core types and pure helpers: the result types, argument checks, files, map and pixel operations, torchrun ranks. No model code."""
