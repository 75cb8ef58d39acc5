"""YouTube-VIS evaluation: `ytvis` (video AP, equal to the official ytvoseval), `results` (CodaLab result files).

Importable without TensorFlow or torch (NumPy and pycocotools only).
"""
