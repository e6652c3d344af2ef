"""Our kernels inside other libraries' gpt-oss models (`transformers.apply`: Hugging Face's GptOssForCausalLM).

Nothing in the network's own blocks imports this package; each integration imports its library on first use."""
