"""The second-order DARTS gradient (finite differences) against autograd through the unrolled step."""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from hwnas.methods import SearchMethod
from hwnas.methods.darts import unrolled_arch_gradient
from hwnas.supernets.cell import CellSupernet


# Max pooling has kinks that central differences step across; these candidates keep the loss smooth
# enough that the finite-difference Hessian-vector product can be held to the exact one.
SMOOTH = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3")


def test_unrolled_gradient_matches_exact_autograd():
    """With a small perturbation (r=1e-5; the published 0.01 steps across ReLU kinks of so tiny a
    network) the finite-difference gradient equals the exact one to 1e-4."""
    torch.manual_seed(0)
    model = CellSupernet(C=4, num_classes=3, layers=3, nodes=2, in_channels=1,
                         edge_primitives={kind: [SMOOTH] * 5 for kind in ("normal", "reduce")}).double()
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn_like(a))  # away from uniform so the gradient is not tiny
    train = (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
    val = (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    loss = F.cross_entropy(model(*train[:1]), train[1])
    loss.backward()
    opt.step()  # a real step first, so momentum buffers exist and enter the virtual step
    opt.zero_grad()

    names = dict(model.named_parameters())
    w_names = [n for n, p in names.items() if not n.startswith("alphas.")]
    a_names = [n for n in names if n.startswith("alphas.")]
    buffers = dict(model.named_buffers())

    def ce(params, batch):
        return F.cross_entropy(functional_call(model, {**buffers, **params}, (batch[0],)), batch[1])

    # exact: d/da L_val(w - eta*(mu*buf + grad_w L_train(w, a) + wd*w), a)
    w = {n: names[n].detach().clone() for n in w_names}
    a = {n: names[n].detach().clone().requires_grad_() for n in a_names}
    train_loss = ce({**w, **{n: t.requires_grad_() for n, t in w.items()}, **a}, train)
    grads = torch.autograd.grad(train_loss, [w[n] for n in w_names], create_graph=True, allow_unused=True)
    eta, mu, wd = 0.1, 0.9, 3e-4
    w_virtual = {}
    for n, g in zip(w_names, grads):
        g = torch.zeros_like(w[n]) if g is None else g
        buf = opt.state[names[n]]["momentum_buffer"]
        w_virtual[n] = w[n] - eta * (mu * buf + g + wd * w[n])
    exact = torch.autograd.grad(ce({**w_virtual, **a}, val), [a[n] for n in a_names])

    for group in opt.param_groups:
        group["lr"] = eta
    method = SearchMethod.__new__(SearchMethod)  # only its default CE loss is used
    before = [p.detach().clone() for p in model.weight_parameters()]
    unrolled_arch_gradient(model, method.loss, method.loss, train, val, opt, r=1e-5)
    for p, b in zip(model.weight_parameters(), before):
        assert torch.equal(p, b), "weights are restored after the unrolled gradient"
    got = torch.cat([names[n].grad.flatten() for n in a_names])
    want = torch.cat([e.flatten() for e in exact])
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
