"""Examples and documents: the schema, screening with a quarantine, the corpus, tokenisation with roles, collation."""
