"""Helpers shared by the backbone parity tests: NCHW<->NHWC, relative error, running a torch reference."""

import numpy as np
import torch


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
  """||out - ref|| / ||ref||."""
  return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


def run_torch(model: torch.nn.Module, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
  """Runs `model` on an NHWC numpy batch; returns its dict of outputs as NHWC numpy."""
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
