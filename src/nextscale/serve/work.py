"""What the web app's jobs do with the model: generate, and edit an image, showing every scale.

A request is checked completely when it arrives (so a bad value is answered at once, not after
waiting in the queue); what runs later in the worker is the returned `work(job)` function.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

import nextscale
from nextscale.editing import inpaint_keep_mask, outpaint_keep_mask, shade_regenerated
from nextscale.images import DEFAULT_MAX_PIXELS, make_grid, pil_to_tensor, to_model_input, to_uint8_hwc
from nextscale.inference_options import MAX_SEED, class_id, class_names, precision_context, recommended_sampling
from nextscale.model_folder import MAX_CFG
from nextscale.sampling import guidance_choices, parse_guidance
from nextscale.serve.inputs import (RequestError, decode_data_url, decode_image, get_bool, get_box, get_choice,
                                    get_float, get_int, png_data_url, shown)
from nextscale.serve.jobs import Job

EDIT_MODES = ("inpaint", "outpaint", "class")
# Uploads are decoded one at a time, in one thread: a 16-megapixel image costs about 0.5 GB while it is decoded and
# converted, and each request thread doing it would keep its own malloc arena of freed memory. A request waits up to
# DECODE_WAIT seconds for its turn.
DECODE_WAIT = 30.0


def data_urls(images_BCHW: torch.Tensor) -> list[str]:
    return [png_data_url(im) for im in to_uint8_hwc(images_BCHW.float().cpu())]


class ModelRunner:
    """The model of this server, and the checks and work of generate / edit requests."""

    def __init__(self, var, name: str, device: torch.device, precision: str = "float32", max_images: int = 16,
                 max_upload_bytes: int = 10_000_000, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.var = var.eval()
        self.vae = var.tokenizer
        self.name = name
        self.device = device
        self.precision = precision
        self.max_images = max_images
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.class_names = class_names(var)
        self.defaults = recommended_sampling(var)  # the defaults of nextscale.sample and `nextscale sample`
        self.decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextscale-decode")
        self.decode_wait = DECODE_WAIT

    def decoded(self, fn, *args):
        """fn(*args) (decoding an upload) run on the decoding thread, after those before it; RequestError (503)
        when its turn does not come within decode_wait seconds."""
        future = self.decoder.submit(fn, *args)
        try:
            return future.result(timeout=self.decode_wait)
        except TimeoutError:
            if not future.cancel():  # it has started meanwhile: let it finish
                return future.result()
            raise RequestError(f"the server is busy decoding other uploads (for over {self.decode_wait:g} s): "
                               f"try again in a moment", status=503) from None

    def info(self) -> dict:
        return {"model": self.name, "resolution": self.vae.resolution, "patch_nums": list(self.var.patch_nums),
                "num_classes": self.var.num_classes, "class_names": self.class_names,
                "defaults": {**self.defaults, "seed": 0, "num_images": min(8, self.max_images), "guidance": "linear"},
                "guidance_choices": guidance_choices(len(self.var.patch_nums)),
                "limits": {"max_images": self.max_images, "max_upload_bytes": self.max_upload_bytes,
                           "max_pixels": self.max_pixels, "max_cfg": MAX_CFG}}

    # ---- checking a request ----
    def settings(self, body: dict) -> dict:
        return {"cfg": get_float(body, "cfg", self.defaults["cfg"], 0.0, MAX_CFG),
                "top_k": get_int(body, "top_k", self.defaults["top_k"], 0, self.var.config.vocab_size),
                "top_p": get_float(body, "top_p", self.defaults["top_p"], 0.0, 1.0),
                "more_smooth": get_bool(body, "more_smooth"), "guidance": self.guidance(body.get("guidance"))}

    def guidance(self, value) -> str:
        """The guidance schedule: "linear" (the default), "constant" or "truncated:N"."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return "linear"
        if not isinstance(value, str):
            raise RequestError(f"guidance must be a text such as 'linear', got {shown(value)}")
        try:
            return str(parse_guidance(value, len(self.var.patch_nums)))
        except ValueError as e:
            raise RequestError(shown(str(e), limit=300, quoted=False)) from None

    def label(self, value) -> int | None:
        """A class name or id, 'unconditional' (the null class), or 'random' (None)."""
        if value is None or str(value).strip().lower() in ("", "random"):
            return None
        text = str(value).strip()
        if text.lstrip("+-").isdigit() and not text.isascii():  # "²" is a digit to Python, and int() refuses it
            raise RequestError(f"class must be a class name or an id in the digits 0-9, got {shown(value)}")
        try:
            return class_id(str(value), self.var)
        except ValueError as e:
            raise RequestError(str(e)) from None

    def image(self, data: bytes) -> torch.Tensor:
        """Image file bytes -> (1, C, res, res) in [0, 1], resized and center-cropped as the model sees it.
        Requests call it through `decoded`."""
        channels = self.vae.config.image_channels
        # the full-size image and its float copy are dropped on return: only the model-size one is kept
        return to_model_input([pil_to_tensor(decode_image(data, self.max_upload_bytes, self.max_pixels), channels)],
                              self.vae.resolution, channels)

    # ---- the work ----
    def _scale_reporter(self, job: Job):
        """on_scale callback: decode the scales so far into one picture per image (the last scale is
        added by the caller from the final decode)."""
        last = len(self.var.patch_nums) - 1

        def on_scale(si: int, tokens: list[torch.Tensor]) -> None:
            if si < last:
                partial = self.vae.decode_tokens(tokens, num_scales=si + 1).add(1).mul(0.5)
                job.add_scale({"pn": self.var.patch_nums[si], "images": data_urls(partial)})
        return on_scale

    def _seeds(self, body: dict, default_num: int) -> list[int]:
        """Image i of a request uses seed + i, as the command line does (per_image_seeds=True)."""
        seed = get_int(body, "seed", 0, 0, MAX_SEED - self.max_images)
        n = get_int(body, "num_images", default_num, 1, self.max_images)
        return list(range(seed, seed + n))

    def _finish(self, job: Job, images: torch.Tensor, seeds: list[int], settings: dict) -> dict:
        """Report the last scale (the final images); -> the result fields every request has."""
        urls = data_urls(images)
        job.add_scale({"pn": self.var.patch_nums[-1], "images": urls})
        return {"images": urls, "seeds": seeds,
                "settings": {k: settings[k] for k in ("cfg", "top_k", "top_p", "guidance")}}

    def generate(self, body: dict):
        """-> (work, number of scales) for a generate request."""
        settings = self.settings(body)
        seeds = self._seeds(body, default_num=min(8, self.max_images))
        label = self.label(body.get("class"))

        def work(job: Job) -> None:
            # labels None: drawn uniformly per image, as `nextscale sample --num-images` draws them
            out = nextscale.sample(self.var, None if label is None else [label] * len(seeds), seed=seeds[0],
                                   per_image_seeds=True, num_samples=len(seeds), precision=self.precision,
                                   on_scale=self._scale_reporter(job), **settings)
            job.result = {**self._finish(job, out.images, seeds, settings), "labels": out.labels.tolist(),
                          "grid": png_data_url(make_grid(out.images.cpu(), ncols=min(len(seeds), 8)))}
        return work, len(self.var.patch_nums)

    def edit(self, body: dict):
        """-> (work, number of scales) for an edit request."""
        settings = self.settings(body)
        seeds = self._seeds(body, default_num=1)
        mode = get_choice(body, "mode", EDIT_MODES)
        label = self.label(body.get("class"))
        if mode == "class" and (label is None or label == self.var.num_classes):
            raise RequestError("a class edit needs a class: choose which class the box should become")
        if label is None:
            label = self.var.num_classes  # in-/out-painting: unconditional unless a class is chosen
        # the work keeps this model-size image, not the upload, while it waits
        image = self.decoded(self.image, decode_data_url(body.get("image")))
        grid = self.var.patch_nums[-1]
        try:
            keep = (outpaint_keep_mask if mode == "outpaint" else inpaint_keep_mask)(get_box(body), grid)
        except ValueError as e:
            raise RequestError(str(e)) from None
        if keep.all():
            raise RequestError("the rectangle keeps the whole image: nothing is left to regenerate")

        @torch.no_grad()
        def work(job: Job) -> None:
            inputs = image.expand(len(seeds), -1, -1, -1).to(self.device)
            with precision_context(self.precision, self.device):  # float32 or autocast; `serve` refuses int8
                out = nextscale.edit(self.var, inputs, keep.to(self.device), labels=label, seed=seeds[0],
                                     per_image_seeds=True, on_scale=self._scale_reporter(job), **settings)
            job.result = {**self._finish(job, out.images, seeds, settings), "label": label, "mode": mode,
                          "input": data_urls(image)[0],
                          "mask": data_urls(shade_regenerated(image[0], keep)[None])[0]}
        return work, len(self.var.patch_nums)

    def prepare_image(self, data: bytes) -> dict:
        """An uploaded file as the model will see it (what the page shows for drawing the box)."""
        return {"image": self.decoded(lambda: data_urls(self.image(data))[0]), "resolution": self.vae.resolution}
