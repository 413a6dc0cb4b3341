"""Model file formats (GGUF, SafeTensors, APR v2) behind one canonical in-memory model."""
