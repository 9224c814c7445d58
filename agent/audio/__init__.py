"""Audio stages of the voice pipeline: resampling, VAD, endpointing, STT and TTS."""
