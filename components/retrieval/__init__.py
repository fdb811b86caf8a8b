"""Retrieval: the FAISS index with its document store, exact top-k, the MiniLM baseline retriever."""
