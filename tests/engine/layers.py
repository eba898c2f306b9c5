"""Small stand-in layers shared by the engine CPU tests."""

import torch
from torch import nn


class Fp8Layer(nn.Module):
    """SGLang's online-fp8 layout: weight is q.t() ([K, N] view), weight_scale is [1, N]."""

    def __init__(self, n, k):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, k).to(torch.float8_e4m3fn).t(), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.zeros(1, n), requires_grad=False)
