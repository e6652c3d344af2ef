"""One import package, ``gpt_oss_triton``, whose subpackages are the top-level folders."""
from setuptools import setup

SUBPACKAGES = ("kernels", "model", "loader")

setup(
    name="gpt-oss-triton",
    version="0.1.0",
    description="Hand-written Triton kernels and a single-GPU engine for OpenAI's gpt-oss-20b and gpt-oss-120b",
    python_requires=">=3.10",
    packages=[f"gpt_oss_triton.{name}" for name in SUBPACKAGES] + ["gpt_oss_triton.model.server"],
    package_dir={f"gpt_oss_triton.{name}": name for name in SUBPACKAGES},
    install_requires=["torch>=2.6", "triton>=3.2", "safetensors>=0.4", "tokenizers>=0.19"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "fastapi>=0.100", "pydantic>=2", "uvicorn>=0.23", "openai>=1.0",
                 "httpx>=0.24"],
        "serve": ["fastapi>=0.100", "pydantic>=2", "uvicorn>=0.23"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["gpt-oss-triton=gpt_oss_triton.model.cli:main"]},
)
