"""Host-side inference shared by every method: tracks and their CodaLab records (`tracks`), mask / box
post-processing (`postprocess`), mmcv box NMS (`nms`), Matrix NMS (`matrix_nms`), torch-exact mask resizing
(`masks`) and the streaming predictor interface (`predictor`)."""
