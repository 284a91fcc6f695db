"""The Python-backend models of a generated Triton repository (copied there as `<model>/1/model.py`).

One file for every Python model; the model config's `restr_step` parameter says which it is:
  bls          `restr`: the request (image + expressions) -> restr_preprocess -> restr_vision (once per
               image, cached) -> restr_language + restr_fusion_decoder (chunks of max_batch) ->
               restr_postprocess -> the outputs of runtime/protocol.py, as restr-serve answers.
  preprocess   rgb -> image, letterbox: used when the export has no `preprocess` graph.
  postprocess  pixel_probs, letterbox, threshold -> mask, probs, score, area: likewise.
  onnx         an ONNX graph run by onnxruntime in the Python backend, for Triton builds without the
               onnxruntime backend (PyTriton's bundled server; tests).
It runs inside Triton, beside restr_transforms.py, restr_tokenizer.py and restr_protocol.py (copies
of the runtime's files) and restr.json; it needs numpy and Pillow (and onnxruntime for `onnx`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections import OrderedDict

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (packaging, tests that supply their own)
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, here)  # the copied runtime files
        config = json.loads(args["model_config"])
        self.step = config["parameters"]["restr_step"]["string_value"]
        self.outputs = [o["name"] for o in config["output"]]
        with open(os.path.join(here, "restr.json"), encoding="utf-8") as f:
            self.cfg = json.load(f)
        if self.step == "bls":
            from restr_tokenizer import Vocabulary

            self.vocab = Vocabulary.load(os.path.join(here, "vocab.txt"), self.cfg.get("tokenizer", "restr"))
            self.cache = OrderedDict()  # image hash -> (visual_features, letterbox): encode once
        elif self.step == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), providers=["CPUExecutionProvider"])
            self.inputs = [i["name"] for i in config["input"]]

    def execute(self, requests):
        run = getattr(self, "_" + self.step)
        responses = []
        for request in requests:
            try:
                out = run(functools.partial(_input, request))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, out[n]) for n in self.outputs]))
            except ValueError as e:  # RequestError, ImageError, a failed step: this request only
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e).splitlines()[0]))
                )
        return responses

    # -- the restr model ----------------------------------------------------------------------------

    def _bls(self, get):
        from restr_protocol import RequestError, read_request, response
        from restr_tokenizer import FUNCTION_WORDS

        c, names = self.cfg, self.cfg["models"]
        image, texts, threshold = read_request(get, c["max_texts"])
        rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16)
        key.update(repr(rgb.shape).encode())
        key = key.hexdigest()
        ms = {"preprocess": 0.0, "vision": 0.0, "language": 0.0, "fusion_decoder": 0.0, "postprocess": 0.0}
        if key in self.cache:
            self.cache.move_to_end(key)
            features, letterbox = self.cache[key]
        else:
            pre = _timed(ms, "preprocess", names["preprocess"], {"rgb": rgb}, ["image", "letterbox"])
            features = _timed(ms, "vision", names["vision"], {"image": pre["image"]}, ["visual_features"])["visual_features"]
            letterbox = pre["letterbox"]
            self.cache[key] = (features, letterbox)
            if len(self.cache) > c["cache_size"]:
                self.cache.popitem(last=False)
        enc = self.vocab.encode(texts, c["max_words"])
        for i, (t, pad) in enumerate(zip(texts, enc.pad_mask)):
            if pad.all():
                raise RequestError(f"expression {i + 1} ({t!r}) is empty: it has no words")
        pixel, patch = [], []
        for i in range(0, len(texts), c["max_batch"]):
            words, pad = enc.words[i : i + c["max_batch"]], enc.pad_mask[i : i + c["max_batch"]]
            lang = _timed(ms, "language", names["language"], {"words": words, "pad_mask": pad}, ["linguistic_features"])[
                "linguistic_features"
            ]
            # one image's features for K expressions: broadcast by the graph when it takes an image batch of 1
            feats = features if c["broadcast_image"] else np.repeat(features, len(words), axis=0)
            out = _timed(
                ms,
                "fusion_decoder",
                names["fusion_decoder"],
                {"visual_features": feats, "linguistic_features": lang, "pad_mask": pad},
                ["pixel_probs", "patch_probs"],
            )
            pixel.append(out["pixel_probs"])
            patch.append(out["patch_probs"])
        thr = c["threshold"] if threshold is None else threshold
        post = _timed(
            ms,
            "postprocess",
            names["postprocess"],
            {"pixel_probs": np.concatenate(pixel), "letterbox": letterbox, "threshold": np.array([thr], np.float32)},
            ["mask", "probs", "score", "area"],
        )
        # as Prediction.timings: the image's stages whole, the later ones this expression's share
        k = len(texts)
        timings = {n: v if n in ("preprocess", "vision") else v / k for n, v in ms.items()}
        no_known = [
            all(w in FUNCTION_WORDS or w in unknown for w in self.vocab.split(t)[: c["max_words"]])
            for t, unknown in zip(texts, enc.unknown)
        ]
        return response(
            post["mask"],
            post["probs"],
            post["score"],
            post["area"],
            np.concatenate(patch).max(axis=1),
            [list(dict.fromkeys(u)) for u in enc.unknown],
            enc.truncated,
            thr,
            no_known,
            [timings] * k,
        )

    # -- fallbacks for the export's preprocess / postprocess graphs ---------------------------------

    def _preprocess(self, get):
        from PIL import Image
        from restr_transforms import Letterbox, normalize

        rgb = get("rgb")
        lb = Letterbox.fit(rgb.shape[:2], self.cfg["image_size"])
        image = normalize(lb.image(Image.fromarray(rgb), tuple(self.cfg["fill"])), self.cfg["mean"], self.cfg["std"])[None]
        return {"image": image, "letterbox": np.array([*lb.src_hw, *lb.new_hw], np.int64)}

    def _postprocess(self, get):
        from restr_transforms import Letterbox

        h, w, nh, nw = (int(v) for v in get("letterbox"))
        lb = Letterbox(size=self.cfg["image_size"], src_hw=(h, w), new_hw=(nh, nw))
        thr = float(get("threshold").reshape(-1)[0])
        probs = np.stack([lb.invert(p[0]) for p in get("pixel_probs")])
        mask = probs > thr
        area = mask.sum(axis=(1, 2))
        score = np.array([p[m].mean() if a else 0.0 for p, m, a in zip(probs, mask, area)], np.float32)
        return {"mask": mask, "probs": probs, "score": score, "area": area.astype(np.int64)}

    def _onnx(self, get):
        values = self.session.run(self.outputs, {n: get(n) for n in self.inputs})
        return dict(zip(self.outputs, values))


def _input(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _timed(ms: dict, stage: str, model: str, inputs: dict, outputs: list) -> dict:
    """`_call`, its milliseconds added to ms[stage]."""
    t0 = time.perf_counter()
    out = _call(model, inputs, outputs)
    ms[stage] += (time.perf_counter() - t0) * 1000
    return out


def _call(model: str, inputs: dict, outputs: list) -> dict:
    """A BLS request to another model of the repository."""
    kwargs = {}
    if hasattr(pb_utils, "PreferredMemory"):  # a GPU model's outputs come back in host memory, for numpy
        kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    request = pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=outputs,
        inputs=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in inputs.items()],
        **kwargs,
    )
    response = request.exec()
    if response.has_error():
        raise ValueError(f"{model}: {response.error().message()}")
    return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in outputs}
