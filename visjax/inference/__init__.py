"""Host-side (NumPy) post-processing shared by the methods' trackers."""
