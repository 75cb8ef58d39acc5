"""torch references: detectron2 ResNet (FrozenBN, `res2..res5`) and torchvision/mmdet ResNet (`layer1..4`)."""

import torch
from torch import nn
from torch.nn import functional as F

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FrozenBatchNorm2d(nn.Module):
  """detectron2 FrozenBN: four buffers, y = x * scale + shift."""

  def __init__(self, num_features, eps=1e-5):
    super().__init__()
    self.eps = eps
    self.register_buffer('weight', torch.ones(num_features))
    self.register_buffer('bias', torch.zeros(num_features))
    self.register_buffer('running_mean', torch.zeros(num_features))
    self.register_buffer('running_var', torch.ones(num_features) - eps)

  def forward(self, x):
    scale = self.weight * (self.running_var + self.eps).rsqrt()
    shift = self.bias - self.running_mean * scale
    return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class D2Conv2d(nn.Conv2d):
  """detectron2 layers.Conv2d: a conv that owns its `norm`."""

  def __init__(self, *args, norm=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.norm = norm

  def forward(self, x):
    x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
    return x if self.norm is None else self.norm(x)


def d2_norm(norm, channels):
  """detectron2 get_norm: 'FrozenBN' or 'GN' (GroupNorm(32, C))."""
  return FrozenBatchNorm2d(channels) if norm == 'FrozenBN' else nn.GroupNorm(32, channels)


class D2Stem(nn.Module):

  def __init__(self, norm='FrozenBN', channels=64):
    super().__init__()
    self.conv1 = D2Conv2d(3, channels, 7, stride=2, padding=3, bias=False, norm=d2_norm(norm, channels))

  def forward(self, x):
    return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class D2Block(nn.Module):
  """detectron2 BottleneckBlock / BasicBlock."""

  def __init__(self, cin, cout, width, stride, bottleneck, stride_in_1x1=False, norm='FrozenBN'):
    super().__init__()
    conv = lambda i, o, k, s: D2Conv2d(i, o, k, stride=s, padding=k // 2, bias=False, norm=d2_norm(norm, o))
    self.shortcut = conv(cin, cout, 1, stride) if (cin != cout or stride != 1) else None
    if bottleneck:
      s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
      self.convs = 3
      self.conv1, self.conv2, self.conv3 = conv(cin, width, 1, s1), conv(width, width, 3, s3), conv(width, cout, 1, 1)
    else:
      self.convs = 2
      self.conv1, self.conv2 = conv(cin, cout, 3, stride), conv(cout, cout, 3, 1)

  def forward(self, x):
    out = F.relu(self.conv1(x))
    out = self.conv2(out)
    if self.convs == 3:
      out = self.conv3(F.relu(out))
    return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class D2ResNet(nn.Module):

  def __init__(self, depth=50, out_features=('res2', 'res3', 'res4', 'res5'), stride_in_1x1=False, norm='FrozenBN',
               base_width=64):
    super().__init__()
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    self.stem = D2Stem(norm, base_width)
    self.out_features = out_features
    self.stage_names = []
    cin = base_width
    n = max(int(f[-1]) for f in out_features) - 1
    for i in range(n):
      width = base_width * 2**i
      blocks = []
      for j in range(BLOCKS[depth][i]):
        blocks.append(D2Block(cin, width * exp, width, 2 if (i > 0 and j == 0) else 1, bottleneck, stride_in_1x1,
                              norm))
        cin = width * exp
      name = f'res{i + 2}'
      self.add_module(name, nn.Sequential(*blocks))
      self.stage_names.append(name)

  def forward(self, x):
    x = self.stem(x)
    out = {}
    for name in self.stage_names:
      x = getattr(self, name)(x)
      if name in self.out_features:
        out[name] = x
    return out


class TVBlock(nn.Module):
  """torchvision / mmdet(style='pytorch') Bottleneck or BasicBlock, BN in eval mode."""

  def __init__(self, cin, cout, width, stride, bottleneck):
    super().__init__()
    if bottleneck:
      self.convs = 3
      self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
      self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
      self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
    else:
      self.convs = 2
      self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
      self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
    self.relu = nn.ReLU()
    self.downsample = None
    if cin != cout or stride != 1:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.convs == 3:
      out = self.bn3(self.conv3(self.relu(out)))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVResNet(nn.Module):

  def __init__(self, depth=50):
    super().__init__()
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i in range(4):
      width = 64 * 2**i
      blocks = []
      for j in range(BLOCKS[depth][i]):
        blocks.append(TVBlock(cin, width * exp, width, 2 if (i > 0 and j == 0) else 1, bottleneck))
        cin = width * exp
      self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    out = {}
    for i in range(4):
      x = getattr(self, f'layer{i + 1}')(x)
      out[f'res{i + 2}'] = x
    return out


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights with non-trivial norm statistics (kaiming fan_out convs; BN/FrozenBN affine and stats)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out)**0.5)
      if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        c = m.weight.shape[0]
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.1 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
      if isinstance(m, nn.GroupNorm):
        m.weight.copy_(0.5 + torch.rand(m.num_channels, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_channels, generator=g))
  return model.eval()
