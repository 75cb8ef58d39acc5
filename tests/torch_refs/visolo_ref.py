"""torch CPU reference of the official VISOLO (SuHoHan95/VISOLO `projects/VISOLO/visolo/models/{visolo_model,loss}.py`)
with the official attribute names, so `VisoloRef(...).state_dict()` has the official checkpoint keys
(`model.backbone.*`, `model.Category_branch_pre.*`, ..., and the `tracking_module.*` alias of the meta-arch).

Written from the official code for the parity tests: the network (`getModelResults`, `VISOLOTest`,
`getGridWeight`), the grid targets (`DataUtils.getGridClassAndMask`) and the losses (`SetCriterion`), on CPU.
"""

import torch
from torch import nn
from torch.nn import functional as F


class Conv2d(nn.Conv2d):
  """detectron2 `layers.Conv2d` with bias: conv -> norm -> activation."""

  def __init__(self, cin, cout, k, norm=None, activation=None):
    super().__init__(cin, cout, k, stride=1, padding=k // 2, bias=True)
    self.norm = norm
    self.activation = activation

  def forward(self, x):
    x = F.conv2d(x, self.weight, self.bias, 1, self.padding)
    if self.norm is not None:
      x = self.norm(x)
    return self.activation(x) if self.activation is not None else x


def get_norm(norm, c):
  return nn.GroupNorm(32, c) if norm == 'GN' else None


def conv(cin, cout, k, norm='', relu=False):
  return Conv2d(cin, cout, k, norm=get_norm(norm, cout), activation=nn.ReLU() if relu else None)


def add_coord(r):
  b, _, h, w = r.shape
  ys, xs = torch.meshgrid(torch.linspace(-1, 1, steps=h), torch.linspace(-1, 1, steps=w), indexing='ij')
  return torch.cat([r, torch.stack([ys, xs]).unsqueeze(0).repeat(b, 1, 1, 1)], dim=1)


class ResBlock(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.downsample = None
    self.conv1 = conv(dim, dim, 3, relu=True)
    self.conv2 = conv(dim, dim, 3)

  def forward(self, x):
    return x + self.conv2(self.conv1(F.relu(x)))


class Refine(nn.Module):

  def __init__(self, indim, outdim):
    super().__init__()
    self.convSCF = conv(indim, outdim, 3)
    self.ResSCF = ResBlock(outdim)
    self.ResF = ResBlock(outdim)

  def forward(self, scf, f):
    s = self.ResSCF(self.convSCF(scf))
    return self.ResF(s + F.interpolate(f, scale_factor=2, mode='bilinear', align_corners=False))


class KernelBranch(nn.Module):

  def __init__(self, S, indim, outdim, norm):
    super().__init__()
    self.S = S
    self.conv_layers = nn.Sequential()
    self.conv_layers_post = nn.Sequential()
    for k in range(3):
      self.conv_layers.add_module(f'kernel_conv{k + 1}', conv(indim + 2 if k == 0 else outdim, outdim, 3, norm, True))
    for k in range(2):
      self.conv_layers_post.add_module(f'kernel_conv{k + 4}', conv(outdim, outdim, 3, norm, True))
    self.pred = conv(outdim, outdim, 1, norm)

  def forward(self, f, pre=True):
    if pre:
      return self.conv_layers(F.interpolate(add_coord(f), size=tuple(self.S), mode='bilinear', align_corners=False))
    return self.pred(self.conv_layers_post(f))


class MaskBranch(nn.Module):

  def __init__(self, indim, outdim, norm):
    super().__init__()
    self.convR4 = conv(indim + 2, outdim, 3, norm)
    self.ResR4 = ResBlock(outdim)
    self.RefR3 = Refine(indim // 2, outdim)
    self.RefR2 = Refine(indim // 4, outdim)
    self.convR1 = conv(outdim, outdim, 3, norm, True)
    self.pred = conv(outdim, outdim, 1, norm)

  def forward(self, r4, r3, r2):
    p = self.ResR4(self.convR4(add_coord(r4)))
    p = self.RefR2(r2, self.RefR3(r3, p))
    return self.pred(self.convR1(F.relu(p)))


class CategoryPreBranch(nn.Module):

  def __init__(self, S, indim, outdim, norm):
    super().__init__()
    self.S = S
    self.conv_layers = nn.Sequential()
    self.cat_pre_conv1 = conv(indim, outdim, 3, norm)
    for k in range(2):
      self.conv_layers.add_module(f'cat_pre_conv{k + 2}', conv(outdim, outdim, 3, norm, True))
    self.cat_pre_conv4 = conv(outdim, outdim, 1, norm)

  def forward(self, f):
    p1 = self.cat_pre_conv1(F.interpolate(f, size=tuple(self.S), mode='bilinear', align_corners=False))
    return self.cat_pre_conv4(self.conv_layers(F.relu(p1))), p1


class CategoryPostBranch(nn.Module):

  def __init__(self, C, dim, norm):
    super().__init__()
    self.conv_layers = nn.Sequential()
    for k in range(3):
      self.conv_layers.add_module(f'cat_post_conv{k + 1}', conv(dim, dim, 3, norm, True))
    self.pred = Conv2d(dim, C, 3)

  def forward(self, f):
    return self.pred(self.conv_layers(f))


class TrackingBranch(nn.Module):

  def __init__(self, dim, norm):
    super().__init__()
    self.conv_layers_share = nn.Sequential()
    for k in range(2):
      self.conv_layers_share.add_module(f'track_S_conv{k + 1}', conv(dim, dim, 3, norm, True))
    self.track_Q_conv1 = conv(dim, dim, 3, norm)
    self.track_Q_conv2 = conv(dim, dim // 2, 1, norm)
    self.track_R_conv1 = conv(dim, dim, 3, norm)
    self.track_R_conv2 = conv(dim, dim // 2, 1, norm)

  def forward(self, f1, f2):
    q = self.track_Q_conv2(self.track_Q_conv1(self.conv_layers_share(F.relu(f1))))
    q = q.flatten(2).transpose(1, 2)  # b, S, c/2
    if f2.dim() == 5:
      b, d, t, s1, s2 = f2.shape
      f2 = f2.transpose(1, 2).reshape(b * t, d, s1, s2)
    else:
      t = 1
    r = self.track_R_conv2(self.track_R_conv1(self.conv_layers_share(F.relu(f2)))).flatten(2)
    pred = torch.bmm(q.repeat(t, 1, 1), r)
    return pred.view(-1, t, pred.shape[1], pred.shape[2])


class Memory(nn.Module):

  def __init__(self, dim, norm):
    super().__init__()
    self.conv1 = conv(dim, dim, 3, norm)

  def forward(self, tras, q_cat, m_cat):
    if tras.dim() == 3:  # readPreFeature
      tras, m_cat = tras[:, None], m_cat[:, :, None]
    b, c, t, s1, s2 = m_cat.shape
    sim = F.softmax(tras.transpose(1, 2).reshape(b, s1 * s2, t * s1 * s2), dim=2)
    mc = self.conv1(m_cat.transpose(1, 2).reshape(b * t, c, s1, s2)).reshape(b, t, c, s1, s2).transpose(1, 2)
    mc = mc.reshape(b, c, t * s1 * s2).transpose(1, 2)
    mem = torch.bmm(sim, mc).transpose(1, 2).reshape(b, c, s1, s2)
    return q_cat + mem


class VISOLO(nn.Module):

  def __init__(self, backbone, S, C, indim, outdim, norm='GN'):
    super().__init__()
    self.backbone = backbone
    self.S = S
    self.Category_branch_pre = CategoryPreBranch(S, indim, outdim, norm)
    self.Category_branch_post = CategoryPostBranch(C, outdim, norm)
    self.Kernel_branch = KernelBranch(S, indim, outdim, norm)
    self.Mask_branch = MaskBranch(indim, outdim, norm)
    self.Tracking_branch = TrackingBranch(outdim, norm)
    self.Memory_module = Memory(outdim, norm)

  def features(self, x):
    f = self.backbone(x)
    return f['res2'], f['res3'], f['res4']

  def getModelResults(self, frames):
    """frames `[B, 3, N=3, H, W]` -> (pred_masks, pred_kernels, pred_cats, pred_tra), plus a dict of
    intermediates (frame-major `[3B, ...]`)."""
    b = frames.shape[0]
    x = torch.cat([frames[:, :, i] for i in range(3)], dim=0)
    r2, r3, r4 = self.features(x)
    cat_f, frame_f = self.Category_branch_pre(r4)
    kernel_f = self.Kernel_branch(r4, True)
    fr = lambda f, i: f[b * i:b * (i + 1)]
    tra, mem_cat, mem_kernel = [], [], []
    for i in range(3):
      others = [j for j in range(3) if j != i]
      t = torch.cat([self.Tracking_branch(fr(frame_f, i), fr(frame_f, j)) for j in others], dim=1)
      if i < 2:
        tra += [t[:, k:k + 1] for k in range(2) if others[k] > i]
      mem_cat.append(self.Memory_module(t, fr(cat_f, i), torch.stack([fr(cat_f, j) for j in others], 2)))
      mem_kernel.append(self.Memory_module(t, fr(kernel_f, i), torch.stack([fr(kernel_f, j) for j in others], 2)))
    mem_cat, mem_kernel = torch.cat(mem_cat, 0), torch.cat(mem_kernel, 0)
    cats = self.Category_branch_post(mem_cat)
    kernels = self.Kernel_branch(mem_kernel, False)
    masks = self.Mask_branch(r4, r3, r2)
    stack = lambda f: torch.stack([fr(f, i) for i in range(3)], 2)
    inter = dict(res2=r2, res3=r3, res4=r4, frame_f=frame_f, cat_f=cat_f, kernel_f=kernel_f, mem_cat=mem_cat,
                 mem_kernel=mem_kernel)
    return (stack(masks), stack(kernels), stack(cats), torch.cat(tra, 1)), inter

  def VISOLOTest(self, frame, m_frame_f, m_cat_f, m_kernel_f):
    """Official test step; memory `None`, `[B, D, S1, S2]` or `[B, D, T, S1, S2]`."""
    r2, r3, r4 = self.features(frame)
    cat_f, frame_f = self.Category_branch_pre(r4)
    kernel_f = self.Kernel_branch(r4, True)
    if m_frame_f is None:
      pred_tra = self.Tracking_branch(frame_f, frame_f)
      mem_out = self.Memory_module(pred_tra[:, 0], cat_f, cat_f)
      k_mem_out = self.Memory_module(pred_tra[:, 0], kernel_f, kernel_f)
    elif m_frame_f.dim() == 4:
      pred_tra = self.Tracking_branch(m_frame_f, frame_f)
      rv = self.Tracking_branch(frame_f, m_frame_f)
      mem_out = self.Memory_module(rv[:, 0], cat_f, m_cat_f)
      k_mem_out = self.Memory_module(rv[:, 0], kernel_f, m_kernel_f)
    else:
      pred_tra = self.Tracking_branch(m_frame_f[:, :, -1], frame_f)
      rv = self.Tracking_branch(frame_f, m_frame_f)
      mem_out = self.Memory_module(rv, cat_f, m_cat_f)
      k_mem_out = self.Memory_module(rv, kernel_f, m_kernel_f)
    return dict(masks=self.Mask_branch(r4, r3, r2), kernels=self.Kernel_branch(k_mem_out, False),
                cats=torch.sigmoid(self.Category_branch_post(mem_out)), tracking=torch.sigmoid(pred_tra),
                frame_f=frame_f, cat_f=cat_f, kernel_f=kernel_f, mem_cat=mem_out, mem_kernel=k_mem_out)

  def getGridWeight(self, pre_frame_f, frame_f, post_frame_f):
    if pre_frame_f is None:
      return torch.sigmoid(self.Tracking_branch(frame_f, post_frame_f)).max(3)[0]
    if post_frame_f is None:
      return torch.sigmoid(self.Tracking_branch(frame_f, pre_frame_f)).max(3)[0]
    both = torch.stack([pre_frame_f, post_frame_f], 2)
    return torch.sigmoid(self.Tracking_branch(frame_f, both)).max(3)[0].mean(1, keepdim=True)


class VisoloRef(nn.Module):
  """The meta-architecture's parameter layout: `model.*` and the `tracking_module` alias."""

  def __init__(self, backbone, S, C, indim, outdim, norm='GN'):
    super().__init__()
    self.model = VISOLO(backbone, S, C, indim, outdim, norm)
    self.tracking_module = self.model.Tracking_branch


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """msra-fill convs (as the official init) plus random biases and GroupNorm affines, so every parameter matters."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, Conv2d):
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2. / fan_out)**0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      if isinstance(m, nn.GroupNorm):
        m.weight.copy_(0.5 + torch.rand(m.num_channels, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_channels, generator=g))
  return model


# ----------------------------------------------------------------------------------------------- targets and losses


def grid_class_and_mask(masks, classes, C, S, eps=0.2):
  """Official `DataUtils.getGridClassAndMask` for one clip: `masks [N frames, L, H, W]` float 0/1, `classes [L]`.

  Returns grid_class `[C, N, S1, S2]`, grid_mask `[S1*S2, N, H, W]`, grid_id_matching `[N, S, S]` (pairs (0,1),
  (0,2), (1,2))."""
  n, l, h, w = masks.shape
  s1, s2 = S
  grid_class = torch.zeros((C, n, s1, s2))
  grid_mask = torch.zeros((s1 * s2, n, h, w))
  mask_center = torch.zeros((n, s1, s2, 3))
  grid_id = torch.zeros((n, l, s1 * s2), dtype=torch.uint8)
  matching = torch.zeros((n, s1 * s2, s1 * s2))
  cell_h, cell_w = h * 1. / s1, w * 1. / s2
  ys, xs = torch.arange(0, h, dtype=torch.float32), torch.arange(0, w, dtype=torch.float32)
  for f in range(n):
    m = masks[f]
    area = m.sum(dim=(1, 2)).clamp(min=1e-6)
    m_y, m_x = m * ys[:, None], m * xs
    cy, cx = m_y.sum(dim=(1, 2)) / area, m_x.sum(dim=(1, 2)) / area
    mh = m_y.amax(dim=(1, 2)) - m_y.amin(dim=(1, 2)) + 1
    mw = m_x.amax(dim=(1, 2)) - m_x.amin(dim=(1, 2)) + 1
    dy, dx = mh * eps, mw * eps
    for idx in range(l):
      if torch.sum(m[idx]) <= 0:
        continue
      y0 = max(torch.div(cy[idx] - dy[idx] / 2, cell_h, rounding_mode='floor'), 0)
      y1 = min(torch.div(cy[idx] + dy[idx] / 2, cell_h, rounding_mode='floor'), s1 - 1)
      x0 = max(torch.div(cx[idx] - dx[idx] / 2, cell_w, rounding_mode='floor'), 0)
      x1 = min(torch.div(cx[idx] + dx[idx] / 2, cell_w, rounding_mode='floor'), s2 - 1)
      for i in range(int(y0), int(y1) + 1):
        for j in range(int(x0), int(x1) + 1):
          if torch.sum(grid_class[:, f, i, j]) > 0:
            gy, gx = torch.tensor(cell_h * i + cell_h / 2), torch.tensor(cell_w * j + cell_w / 2)
            oy, ox, o_idx = mask_center[f, i, j]
            if (gy - cy[idx])**2 + (gx - cx[idx])**2 < (gy - oy)**2 + (gx - ox)**2:
              grid_class[:, f, i, j] = 0
              grid_mask[i * s2 + j, f] = 0
              grid_id[f, int(o_idx), i * s2 + j] = 0
            else:
              continue
          grid_class[int(classes[idx]), f, i, j] = 1
          grid_mask[i * s2 + j, f] = m[idx]
          mask_center[f, i, j] = torch.tensor([cy[idx], cx[idx], idx])
          grid_id[f, idx, i * s2 + j] = 1
  for idx in range(l):
    cells = [torch.nonzero(grid_id[f, idx], as_tuple=True)[0] for f in range(3)]
    for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
      for ya in cells[a]:
        for yb in cells[b]:
          matching[p, ya, yb] = 1
  return grid_class, grid_mask, matching


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.):
  """fvcore `sigmoid_focal_loss`, reduction 'none'."""
  p = torch.sigmoid(inputs)
  ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction='none')
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * ((1 - p_t)**gamma)
  return (alpha * targets + (1 - alpha) * (1 - targets)) * loss


def category_loss(pred, target, alpha=0.25, gamma=2.):
  """`pred`, `target` `[B, C, N, S1, S2]`."""
  num_fg = target.sum(dim=(1, 3, 4)).clamp_min(1.)
  loss = sigmoid_focal_loss(pred, target, alpha, gamma).sum(dim=(1, 3, 4)) / num_fg
  return loss.mean()


def mask_map(mask, kernel, idxs):
  """Official `MaskLoss.getMaskMap`: `mask [dim, h, w]`, `kernel [dim, S1, S2]` -> `[len(idxs), 4h, 4w]`."""
  c, s1, s2 = kernel.shape
  maps = []
  for idx in idxs:
    row, col = torch.div(idx, s2, rounding_mode='floor'), idx % s2
    maps.append(F.conv2d(mask[None], kernel[:, row, col].view(1, c, 1, 1))[0, 0])
  maps = torch.stack(maps)[None]
  return torch.sigmoid(F.interpolate(maps, scale_factor=4, mode='bilinear', align_corners=False)[0])


def mask_loss(pred_mask, pred_kernel, target, eps=1e-7, weight=3.):
  """`pred_mask [B, dim, N, h, w]`, `pred_kernel [B, dim, N, S1, S2]`, `target [B, S, N, H, W]`."""
  b_, _, n_, _, _ = pred_kernel.shape
  valid = (target.sum(dim=(3, 4)) > 0).float()  # B, S, N
  loss = 0.
  for n in range(n_):
    n_loss = 0.
    for b in range(b_):
      idxs = torch.nonzero(valid[b, :, n], as_tuple=True)[0]
      if len(idxs) == 0:
        continue
      p = mask_map(pred_mask[b, :, n], pred_kernel[b, :, n], idxs)
      t = target[b, idxs, n]
      num = (p * t).sum(dim=(1, 2)) * 2
      den = (p**2).sum(dim=(1, 2)) + (t**2).sum(dim=(1, 2))
      n_loss += torch.sum(1 - num / (den + eps)) / max(1, len(idxs))
    n_loss /= max(1, int((valid[:, :, n].sum(dim=1) > 0).sum()))
    loss += n_loss
  loss /= max(1, int((valid.sum(dim=(0, 1)) > 0).sum()))
  return loss * weight


def tracking_loss(pred, target, alpha=0.25, gamma=2.):
  """`pred`, `target` `[B, P, S, S]` (the `gt_cat=None` branch the official criterion runs)."""
  valid = (target.sum(dim=3) != 0).float()
  loss = torch.sum(sigmoid_focal_loss(pred, target, alpha, gamma).sum(dim=3) * valid, 2)
  valid = valid.sum(dim=2)
  loss = loss / valid.clamp_min(1.)
  return loss.sum() / max(1, int((valid > 0).sum()))


def official_test_outputs(model: VISOLO, frames: torch.Tensor) -> list[dict]:
  """The network side of the official eval loop (`Visolo.forward`): `VISOLOTest` on each frame `[N, 3, H, W]`
  (normalised) against the memory as the official code keeps it (frame 0 reads itself, frame 1 a 4-d memory of
  frame 0, then appends at frames 1, 2 and n % 5 == 2, otherwise drops m[-2]). Returns each frame's outputs plus
  'memory_len' (memory frames read)."""
  keys = ('frame_f', 'cat_f', 'kernel_f')
  memory, outputs = None, []
  with torch.no_grad():
    for t in range(len(frames)):
      if t == 0:
        mem = (None,) * 3
      else:
        mem = [memory[k][:, :, 0] if t == 1 else memory[k] for k in keys]
      out = model.VISOLOTest(frames[t:t + 1], *mem)
      out['memory_len'] = 0 if memory is None else memory['frame_f'].shape[2]
      outputs.append(out)
      new = {k: out[k].unsqueeze(2) for k in keys}
      if memory is None:
        memory = new
      elif t < 3 or t % 5 == 2:
        memory = {k: torch.cat([memory[k], new[k]], 2) for k in keys}
      else:
        memory = {k: torch.cat([memory[k][:, :, :-2], memory[k][:, :, -1:], new[k]], 2) for k in keys}
  return outputs
