"""What lands on disk: the journal, prefix hashing, completion records."""
