"""Is the model still behaving? Reference statistics carried in the artifact, online drift per model
version, payload capture with redaction, and feedback joined into accuracy.

The decisions are pure and live here, apart from Ray and HTTP: what a tensor's features are
(`features`), the reference a build records (`reference`), the drift tests (`drift`), when a window
closes (`window`), which requests are captured and what of them is kept (`sampling`, `redaction`).
`capture_writer` writes capture files; `report` joins captures with labels offline.
"""
