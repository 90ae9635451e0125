"""Seeds trained as one model: k copies of a network stacked over a leading axis.

``Ensemble(models)`` stacks the parameters and buffers of k modules of one
architecture (``torch.func.stack_module_state``) and evaluates them with
``torch.func.functional_call`` under ``torch.func.vmap``. To an objective it is an
ordinary model on ``k * n`` samples: rows ``[i n, (i + 1) n)`` of every input
belong to member i, and member i's output there is member i's network's. So every
objective's per-sample loss works unchanged (its checks run outside ``vmap``),
and member i's loss is the mean over its own rows. A network with an analytic
``jvp`` keeps it: ``Ensemble.jvp`` maps it over the members too (which needs its
autograd functions to be vmap-safe: ``MeanFlowMLP``'s are).

What an objective must do for this to hold: call the model on its whole batch, in
order (every built-in objective does); a call on a subset of rows, or on rows
permuted, would give some rows another member's network. A call whose batch is
not ``k * n`` rows is an error.

``train_ensemble(cfgs)`` trains the seeds of one configuration (``cfgs`` differ in
``seed`` only) as one ensemble: each member with its own data stream, initial
draw, optimiser state and EMA, exactly as ``train(cfg)`` gives them; the Adam and
EMA updates are elementwise, so one optimiser over the stacked parameters is k
independent optimisers. It returns one ``TrainResult`` per member, each with its
own modules, as ``train`` does. The members agree with their solo runs to float
round-off, not bit for bit (a batched product rounds as it rounds). An objective whose
loss draws from torch's global generator (``split_mf``, ``psd``: lambda ~ U(0, 1))
would have the members share one stream: its seeds are trained one by one instead
(``TrainResult.ensemble`` = 1), exactly as their solo runs.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import replace

import torch
from torch import nn
from tqdm import tqdm

from mfverify import objectives
from mfverify.cases import get_case
from mfverify.train.loop import (DTYPES, TrainResult, _batches, _loss_check_interval, build_model, objective_options,
                                 optimizer, resolve_device, train)


def _key(name: str) -> str:
    return name.replace(".", "__")


class _Method(nn.Module):
    """``forward`` calls ``inner.jvp``: ``functional_call`` then reaches the method."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner.jvp(*args, **kwargs)


class Ensemble(nn.Module):
    """k modules of one architecture as one module on stacked samples (see the module docstring)."""

    def __init__(self, models):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("Ensemble needs at least one model")
        kinds = {type(m) for m in models}
        if len(kinds) != 1:
            raise TypeError(f"the members must be one architecture, got {sorted(k.__name__ for k in kinds)}")
        params, buffers = torch.func.stack_module_state(models)
        self.k = len(models)
        self.names = list(params)
        self.stacked = nn.ParameterDict({_key(n): nn.Parameter(p.detach().clone()) for n, p in params.items()})
        for n, b in buffers.items():
            self.register_buffer("buffer__" + _key(n), b.clone())
        self.buffer_names = list(buffers)
        # the architecture only, on the meta device; kept out of the module tree (not moved by .to())
        template = copy.deepcopy(models[0]).to("meta")
        self.__dict__["_template"] = template
        self.__dict__["_method"] = _Method(template) if hasattr(models[0], "jvp") else None
        if self._method is not None:
            self.jvp = self._jvp

    # ---- the members' parameters
    def member_params(self) -> dict:
        return {n: self.stacked[_key(n)] for n in self.names}

    def member_buffers(self) -> dict:
        return {n: getattr(self, "buffer__" + _key(n)) for n in self.buffer_names}

    # ---- evaluation
    def _split(self, *arrays):
        n = arrays[0].shape[0]
        if n % self.k:
            raise ValueError(f"an ensemble of {self.k} members takes k * n rows (member i's rows are "
                             f"[i n, (i + 1) n)); got {n}: the objective must call the model on its whole batch")
        return [a.unflatten(0, (self.k, -1)) for a in arrays]

    def forward(self, x, r, t):
        def one(p, b, x, r, t):
            return torch.func.functional_call(self._template, (p, b), (x, r, t))

        out = torch.func.vmap(one)(self.member_params(), self.member_buffers(), *self._split(x, r, t))
        return out.flatten(0, 1)

    def _jvp(self, x, r, t, dx, dr, dt, tangent_grad: bool = True):
        def one(p, b, *args):
            p = {"inner." + n: v for n, v in p.items()}
            b = {"inner." + n: v for n, v in b.items()}
            return torch.func.functional_call(self._method, (p, b), args, {"tangent_grad": tangent_grad})

        u, du = torch.func.vmap(one)(self.member_params(), self.member_buffers(), *self._split(x, r, t, dx, dr, dt))
        return u.flatten(0, 1), du.flatten(0, 1)


def train_ensemble(cfgs, progress: bool = True):
    """Train the configurations ``cfgs`` (equal but for ``seed``) as one ensemble; one
    ``TrainResult`` per member, in order (see the module docstring)."""
    cfgs = list(cfgs)
    if not cfgs:
        raise ValueError("train_ensemble needs at least one configuration")
    first = cfgs[0]
    for cfg in cfgs[1:]:
        if replace(cfg, seed=first.seed) != first:
            raise ValueError("the configurations of an ensemble must differ in seed only")
    if first.conditional or objectives.get(first.objective).heads != 1:
        raise ValueError(f"objective {first.objective!r}{' (conditional)' if first.conditional else ''}: an "
                         "ensemble evaluates one-head unconditional members only; train these runs one by one")
    seeds = [cfg.seed for cfg in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the members' seeds must be distinct, got {seeds}")
    device, dtype = resolve_device(first.device), DTYPES[first.dtype]
    mixture = get_case(first.case)
    models = []
    for cfg in cfgs:  # each member's initial draw as train(cfg) makes it
        torch.manual_seed(cfg.seed)
        models.append(build_model(cfg, mixture.d).to(device=device, dtype=dtype))
    k = len(models)
    ens = Ensemble(models)
    params = [ens.stacked[_key(n)] for n in ens.names]  # in the members' own order
    ema_params = [p.detach().clone() for p in params]
    opt, schedule = optimizer(first, params)  # elementwise: k independent optimisers
    objective = objectives.get(first.objective)
    options = objective_options(first)
    if objective.needs_truth:
        options["mixture"] = mixture
    streams = [_batches(cfg, mixture, torch.Generator().manual_seed(cfg.seed), device, dtype) for cfg in cfgs]
    losses = [[] for _ in range(k)]
    diverged = [None] * k
    frozen = [None] * k  # (params, ema) of a member at its divergence: as train() leaves it
    active = torch.ones(k, dtype=torch.bool, device=device)
    check_every = _loss_check_interval(device)
    pending = []
    start = time.perf_counter()
    bar = tqdm(total=first.steps, desc=f"{first.case}/{first.objective}/ensemble{k}", disable=not progress, leave=False)
    for step, batches in enumerate(zip(*streams)):
        x0, x1, r, t = (torch.cat(parts) for parts in zip(*batches))
        before = _global_rng_states(device) if step == 0 else None
        per = objective.per_sample(ens, x0, x1, r, t, **objective.options_at(step, first.steps, options))
        if before is not None and _changed(before, _global_rng_states(device)):
            # the loss draws its own numbers from torch's global generator: k members would
            # share one stream, each drawing what its solo run never drew. Train them one by one.
            bar.close()
            print(f"{first.case}/{first.objective}: its loss draws from torch's global generator, so its seeds are "
                  "trained one by one (as their solo runs, bit for bit), not as one ensemble", file=sys.stderr)
            return [train(cfg, progress=progress) for cfg in cfgs]
        member_loss = per.view(k, -1).mean(1)
        pending.append(member_loss.detach())
        if len(pending) == check_every or step == first.steps - 1:
            values = torch.stack(pending).tolist()  # (steps, k)
            pending = []
            for i in range(k):
                if diverged[i] is not None:
                    continue
                column = [row[i] for row in values]
                bad = [j for j, v in enumerate(column) if not math.isfinite(v)]
                if bad:
                    losses[i] += column[: bad[0] + 1]
                    diverged[i] = step - len(column) + 1 + bad[0]
                    frozen[i] = ([p[i].detach().clone() for p in params], [e[i].clone() for e in ema_params])
                    active[i] = False
                else:
                    losses[i] += column
            bar.update(len(values))
            if not active.any():
                break
        opt.zero_grad(set_to_none=True)
        # the members' losses are independent: the gradient of their sum is each member's own
        torch.where(active, member_loss, torch.zeros_like(member_loss)).sum().backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - first.ema_decay)
    bar.close()
    wall = time.perf_counter() - start
    names = ens.names
    results = []
    for i in range(k):
        if frozen[i] is not None:
            member_p, member_e = frozen[i]
        else:
            member_p, member_e = [p[i].detach().clone() for p in params], [e[i].clone() for e in ema_params]
        buffers = {n: b[i].clone() for n, b in ens.member_buffers().items()}
        model, ema = copy.deepcopy(models[i]), copy.deepcopy(models[i]).requires_grad_(False)
        model.load_state_dict({**dict(zip(names, member_p)), **buffers})
        ema.load_state_dict({**dict(zip(names, member_e)), **buffers})
        results.append(TrainResult(model=model, ema=ema, losses=losses[i], diverged_step=diverged[i], wall_seconds=wall,
                                   ensemble=k))
    return results


def _global_rng_states(device) -> list:
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _changed(before: list, after: list) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))
