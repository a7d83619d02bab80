"""placeholder"""
def hf_refusal(f, meta):
    return "not packed from GGUF"
