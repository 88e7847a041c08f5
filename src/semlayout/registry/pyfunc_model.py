"""The MLflow pyfunc wrapper, logged as *code* ("models from code"): nothing is pickled.

MLflow copies this file into the model and runs it at load time; `load_context`
rebuilds the networks from `artifacts/checkpoint/` (weights + config.json) with
`semlayout.inference.Translator`. Inputs to `predict`:

- a dict `{"direction": "sem2layout"|"layout2sem", "images": [(H, W) uint8 arrays],
  "binarize": bool, "polarity": "auto"|"bright"|"dark"}` (polarity optional, default auto)
  -> list of (H, W) uint8 arrays, each the size of its input;
- a pandas DataFrame with columns `direction` and `image_png_b64` (base64 PNG; the form
  `mlflow models serve` speaks) and optionally `polarity` -> DataFrame with columns
  `image_png_b64` and `polarity` (+1 / -1, the polarity each image was translated in).
"""

from __future__ import annotations

import base64
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class SemlayoutTranslatorModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from semlayout.inference import Translator

        self.translator = Translator.load(context.artifacts["checkpoint"])

    def predict(
        self, context, model_input, params=None
    ):  # untyped: MLflow would infer a schema from hints
        from semlayout.errors import SemlayoutError

        if isinstance(model_input, dict):
            direction = str(model_input.get("direction", ""))
            images = [np.asarray(im, dtype=np.uint8) for im in model_input.get("images", [])]
            return self.translator.translate(
                direction,
                images,
                binarize=bool(model_input.get("binarize", False)),
                polarity=model_input.get("polarity", "auto"),
            )
        import pandas as pd

        if isinstance(model_input, pd.DataFrame) and {"direction", "image_png_b64"} <= set(
            model_input.columns
        ):
            from semlayout.data.pairs import decode_gray8, encode_png

            outputs, used = [], []
            for i, row in enumerate(model_input.itertuples(index=False)):
                img = decode_gray8(base64.b64decode(row.image_png_b64), name=f"row {i}")
                (done,) = self.translator.translate_detailed(
                    str(row.direction), [img], polarity=getattr(row, "polarity", "auto")
                )
                outputs.append(base64.b64encode(encode_png(done.output)).decode("ascii"))
                used.append(done.decision.polarity)
            return pd.DataFrame({"image_png_b64": outputs, "polarity": used})
        raise SemlayoutError(
            "model input must be {'direction', 'images'} or a DataFrame with columns "
            f"direction,image_png_b64; got {type(model_input).__name__}"
        )


mlflow.models.set_model(SemlayoutTranslatorModel())
