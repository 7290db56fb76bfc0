"""One module per reproduced paper: the study's steps, tables and the paper's published numbers."""
