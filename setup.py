"""One import package, ``gpt_oss_triton``, whose subpackages are the top-level folders."""
from setuptools import find_packages, setup

SUBPACKAGES = ("kernels", "model", "loader")
SERVE = ["fastapi>=0.100", "pydantic>=2", "uvicorn>=0.30", "h11>=0.14", "starlette>=0.27", "llguidance>=1.9"]

setup(
    name="gpt-oss-triton",
    version="0.1.0",
    description="Hand-written Triton kernels and a single-GPU engine for OpenAI's gpt-oss-20b and gpt-oss-120b",
    python_requires=">=3.10",
    # each folder and every package below it (model.runtime, model.server, ...)
    packages=[f"gpt_oss_triton.{name}" for name in SUBPACKAGES]
    + [f"gpt_oss_triton.{name}.{sub}" for name in SUBPACKAGES for sub in find_packages(where=name)],
    # kernels/ has no __init__.py: a namespace portion, so from the checkout root it never shadows the `kernels`
    # library (transformers imports it); model/ and loader/ keep theirs for their public exports
    package_dir={f"gpt_oss_triton.{name}": name for name in SUBPACKAGES},
    # gpt-oss-nano's trained weights (config.json, model.safetensors, tokenizer.json): from_pretrained("nano")
    package_data={"gpt_oss_triton.model.nano": ["weights/*"]},
    # numpy: Triton's interpreter imports it (kernels on a CPU), and torch warns at import without it
    install_requires=["torch>=2.6", "triton>=3.2", "numpy>=1.24", "safetensors>=0.4", "tokenizers>=0.19"],
    extras_require={
        # the server imports h11 and starlette itself (its HTTP protocol, middleware), not only through uvicorn/FastAPI;
        # llguidance is structured outputs' grammar engine (model/runtime/grammar.py)
        "serve": SERVE,
        # jsonschema checks structured outputs; prometheus-client parses /metrics; openai-agents drives the server;
        # transformers (+ accelerate, its MXFP4 loading): an independent implementation our reference and our
        # synthetic checkpoints are checked against (tests/test_bench_peers.py, tests/test_interop.py)
        "test": ["pytest>=7", "pytest-benchmark>=4", *SERVE, "openai>=1.0", "httpx>=0.24", "prometheus-client>=0.17",
                 "openai-agents>=0.2", "jsonschema>=4", "transformers>=4.56", "accelerate>=1.0"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["gpt-oss-triton=gpt_oss_triton.model.cli:main"]},
)
