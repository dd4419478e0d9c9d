"""Evaluation: perplexity, Rouge-L, key recall (metrics) and the RAG retrieval stack: chunks, FAISS + BM25,
recall@k, prompts, answer scoring (retrieval). The top of the runtime: it may import every other room."""
