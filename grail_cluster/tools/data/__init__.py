"""Data-lifecycle steps that read and write GRAIL motion libraries (export, summarize, merge)."""
