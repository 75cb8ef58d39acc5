"""Host-side inference shared by every method: tracks and their CodaLab records (`tracks`), mask / box
post-processing (`postprocess`), the streaming predictor interface (`predictor`), Matrix NMS (`matrix_nms`) and
torch-exact mask resizing (`masks`)."""
