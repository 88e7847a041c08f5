"""Image buffer for the discriminator (Shrivastava et al. 2017; pix2pix/CycleGAN `ImagePool`).

D sees a mix of the newest fakes and fakes from earlier steps, which damps
oscillation. For a conditional D the stored item is the whole `cat(source, fake)`
pair, so an old fake is never shown beside a new source. Randomness comes from
the pool's own generator so that its state can be saved for an exact resume.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []  # each (C, H, W), detached
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) new fakes -> (B, C, H, W) to show D.

        Until the pool is full every new image is stored and returned. After that
        each image has a 50% chance of being swapped with a random stored one
        (the stored one is returned, the new one takes its place).
        """
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
                continue
            if torch.rand((), generator=self.generator).item() > 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self.generator).item())
                out.append(self.images[idx].clone())
                self.images[idx] = img.clone()
            else:
                out.append(img)
        return torch.stack(out).to(images.device)

    def state_dict(self) -> dict[str, Any]:
        stored = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stored, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size = int(state["size"])
        stored = state["images"]
        self.images = [img.clone() for img in stored] if stored.numel() else []
        self.generator.set_state(state["rng"])
