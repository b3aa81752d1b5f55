"""RGB + 3D memory-bank model with cross-modal distillation (CMDIAD); inference in engine.runtime.multimodal."""
