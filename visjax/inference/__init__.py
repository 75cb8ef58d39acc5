"""Host-side (numpy) post-processing shared by the methods' trackers."""
