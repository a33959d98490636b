"""Search: the vector store (pgvector), query planning, fusion and facets."""
