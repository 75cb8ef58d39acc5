"""Multi-scale deformable attention (MSDA): XLA fallback and Pallas kernels behind one dispatcher."""

from pallas_kernels.msda.api import default_implementation
from pallas_kernels.msda.api import IMPLEMENTATIONS
from pallas_kernels.msda.api import ms_deform_attn
from pallas_kernels.msda.xla import ms_deform_attn_xla
