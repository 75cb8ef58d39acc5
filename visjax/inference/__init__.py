"""Host-side inference shared by every method: tracks and their CodaLab records (`tracks`), mask / box
post-processing (`postprocess`), and the streaming predictor interface (`predictor`)."""
