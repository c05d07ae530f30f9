import pytest
import torch

from mmhsa import DOMAINS, Hierarchy
from mmhsa.nn import HierarchicalEncoder, HSAAttention, PathEmbedding, PositionEncoder, pool_nodes


def test_flat_hsa_layer_is_multi_head_softmax_attention():
    """On a flat tree with include_self, no positions and no QK norm, the layer is standard MHA."""
    torch.manual_seed(0)
    n, dim, heads = 7, 12, 3
    layer = HSAAttention(dim, heads, qk_norm=False, pos_dim=0, include_self=True).double()
    x = torch.randn(n, dim, dtype=torch.float64)
    h = Hierarchy.from_nested(list(range(n)))
    q, k, v = layer.qkv[0](x).view(n, 3, heads, dim // heads).unbind(1)
    att = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) / (dim // heads) ** 0.5, -1)
    expected = layer.proj(torch.einsum("hij,jhd->ihd", att, v).reshape(n, dim))
    torch.testing.assert_close(layer(x, h), expected)


def test_modality_specific_projections():
    torch.manual_seed(0)
    layer = HSAAttention(8, 2, modalities=2, pos_dim=0)
    h = Hierarchy.from_nested([[0, 1, 2], [3, 4]])
    x = torch.randn(5, 8)
    a = layer(x, h, torch.tensor([0, 0, 0, 1, 1]))
    b = layer(x, h, torch.zeros(5, dtype=torch.long))
    assert not torch.allclose(a, b)
    with torch.no_grad():  # making both projections equal makes the modality ids irrelevant
        layer.qkv[1].load_state_dict(layer.qkv[0].state_dict())
    torch.testing.assert_close(layer(x, h, torch.tensor([0, 0, 0, 1, 1])), layer(x, h))


def test_position_encoder_domains():
    video = Hierarchy.regular(
        [2, 3, (2, 2)], kinds=["video", "clip", "frame", "patch"], domains=["time", "index", "grid"]
    )
    question = Hierarchy.from_parents([-1, 0, 0, 0], domains=["set", "set", "set", "set"])
    sample = Hierarchy.join([video, question], keys=["video", "question"])
    enc = PositionEncoder(heads=2, dim=4, keys=["video", "question", "answer_0"])
    pos = enc(sample)
    assert pos.shape == (sample.num_nodes, 2, 4)
    set_nodes = sample.domain == DOMAINS.index("set")
    assert torch.all(pos[set_nodes] == 0) and set_nodes.sum() == 1 + 3  # the root and the unordered tokens
    patches = sample.leaf_node[:4]  # (0,0), (0,1), (1,0), (1,1) of the first frame
    assert not torch.allclose(pos[patches[0]], pos[patches[1]])
    torch.testing.assert_close(pos[patches[0]], pos[sample.leaf_node[4]])  # same cell in the next frame
    with pytest.raises(ValueError, match="'question' is not in the model's key vocabulary"):
        PositionEncoder(2, 4, keys=["video"])(sample)


def test_encoder_and_pooling():
    torch.manual_seed(0)
    video = Hierarchy.regular([2, 2, (2, 2)])
    text = Hierarchy.from_nested([[0, 1, 2], [3, 4]])
    h = Hierarchy.join([video, text], keys=["video", "question"])
    modality = torch.tensor([0] * 16 + [1] * 5)
    features = {"video": torch.randn(16, 10).half(), "text": torch.randn(5, 6).half()}
    enc = HierarchicalEncoder({"video": 10, "text": 6}, dim=16, depth=2, heads=2, pos_dim=4, keys=["video", "question"])
    out = enc(features, modality, h)
    assert out.shape == (21, 16) and torch.isfinite(out).all()
    out.sum().backward()
    no_grad = {n for n, p in enc.named_parameters() if p.grad is None}
    assert no_grad and all(n.endswith(".time.weight") for n in no_grad)  # no node sits in the time domain
    nodes = torch.tensor([0, 1, int(torch.nonzero(h.parent == 0).flatten()[1])])  # sample, video, question
    pooled = pool_nodes(out.detach(), h, nodes)
    torch.testing.assert_close(pooled[0], out.detach().mean(0))
    torch.testing.assert_close(pooled[1], out.detach()[:16].mean(0))
    torch.testing.assert_close(pooled[2], out.detach()[16:].mean(0))
    with pytest.raises(ValueError, match="modality 'text': 5 leaves but 4 feature rows"):
        enc({"video": features["video"], "text": features["text"][:4]}, modality, h)


@pytest.mark.parametrize("mixer", ["flat", "mean"])
def test_baseline_mixers_keep_trees_apart(mixer):
    torch.manual_seed(0)
    layer = HSAAttention(8, 2, mixer=mixer, pos_dim=0)
    a, b = Hierarchy.from_nested([[0, 1], [2, 3, 4]]), Hierarchy.from_nested([0, [1, 2]])
    xa, xb = torch.randn(5, 8), torch.randn(3, 8)
    both = layer(torch.cat([xa, xb]), Hierarchy.batch([a, b]))
    torch.testing.assert_close(both[:5], layer(xa, a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[5:], layer(xb, b), rtol=1e-5, atol=1e-6)
    if mixer == "mean":  # attention-free: the output ignores the order and the structure of the tree
        torch.testing.assert_close(layer(xa, a)[0], layer(xa, a)[4])
    with pytest.raises(ValueError, match="mixer"):
        HSAAttention(8, 2, mixer="linear")


def test_path_embedding_sums_the_positions_on_the_way_to_the_root():
    """A 2-clip x 3-frame x 2x2-patch video: leaf = patch(grid) + frame(time) + clip(time) (+ root: set = 0)."""
    h = Hierarchy.regular([2, 3, (2, 2)], kinds=["video", "clip", "frame", "patch"])
    torch.manual_seed(0)
    path = PathEmbedding(8)
    e = path.nodes(h)[:, 0]
    out = path(h)
    assert out.shape == (h.num_leaves, 8)
    for leaf, node in enumerate(h.leaf_node.tolist()):
        expected = torch.zeros(8)
        while node >= 0:
            expected += e[node]
            node = int(h.parent[node])
        torch.testing.assert_close(out[leaf], expected)
    # the same cell of different frames, and different cells of one frame, differ
    assert (out[0] - out[4]).abs().max() > 1e-3 and (out[0] - out[1]).abs().max() > 1e-3
    out.sum().backward()
    assert path.nodes.index.weight.grad.abs().sum() > 0 and path.nodes.grid.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("content_position", [False, True])
def test_content_position_lets_node_means_see_where_things_are(content_position):
    """Moving an object to another cell keeps the frame's leaf-mean with content + position inputs, and
    changes it with the content x position term (what motion read-outs need)."""
    torch.manual_seed(0)
    frame = Hierarchy.regular([(2, 2)])  # one frame, a 2x2 grid of patches
    enc = HierarchicalEncoder({"video": 6}, dim=8, depth=0, heads=2, pos_dim=0, content_position=content_position)
    enc.norm = torch.nn.Identity()  # compare the inputs' means themselves
    background, thing = torch.zeros(6), torch.randn(6)
    left = torch.stack([thing, background, background, background])
    right = torch.stack([background, background, background, thing])
    modality = torch.zeros(4, dtype=torch.long)
    means = [enc({"video": x}, modality, frame).mean(0) for x in (left, right)]
    assert torch.allclose(means[0], means[1], atol=1e-6) != content_position


def test_relative_time_counts_from_the_first_sibling():
    """Two clips whose frames sit at the same offsets from the clips' starts: with relative time the frames
    get the same positions (a frame's place in its clip), with video-absolute time they do not."""
    parent = [-1, 0, 1, 1, 1, 0, 5, 5, 5]  # video, clip, 3 frames, clip, 3 frames
    coord = [[0, 0], [0, 0], [0.2, 0], [0.7, 0], [1.2, 0], [4, 0], [4.1, 0], [4.6, 0], [5.1, 0]]
    h = Hierarchy.from_parents(parent, domains=["set"] + ["time"] * 8, coords=coord)
    frames_a, frames_b = [2, 3, 4], [6, 7, 8]
    torch.manual_seed(0)
    relative = PositionEncoder(1, 8, relative_time=True, min_seconds=0.1)(h)
    absolute = PositionEncoder(1, 8, min_seconds=0.1)(h)
    torch.testing.assert_close(relative[frames_a], relative[frames_b])
    torch.testing.assert_close(relative[1], relative[2])  # each clip's and each clip's first frame: offset 0
    assert not torch.allclose(absolute[frames_a], absolute[frames_b])


def test_sinusoid_periods():
    from mmhsa.nn.position import sinusoid

    x = torch.tensor([0.0, 0.05])
    f = sinusoid(x, 8, max_period=100.0, min_period=0.1)  # frequencies 10, ..., 10 / 1000 ** (3 / 4) rad per unit
    torch.testing.assert_close(f[1, 0], torch.sin(torch.tensor(0.5)))
    torch.testing.assert_close(f[1, 3], torch.sin(torch.tensor(0.05 * 10 / 1000**0.75)))
    torch.testing.assert_close(sinusoid(x, 8, 100.0), sinusoid(x, 8, 100.0, 1.0))  # the default shortest period: 1


def test_previous_leaf_pairs_the_same_cell_of_consecutive_frames():
    from mmhsa.nn import previous_leaf

    # video: clip of 3 frames x 2 patches, clip of 1 frame x 2 patches; then a question of 3 tokens
    video = Hierarchy.from_nested([[[0, 1], [2, 3], [4, 5]], [[6, 7]]])
    question = Hierarchy.from_nested([0, 1, 2])
    h = Hierarchy.join([video, question], keys=["video", "question"])
    assert previous_leaf(h).tolist() == [-1, -1, 0, 1, 2, 3, -1, -1, -1, -1, -1]
    ragged = Hierarchy.from_nested([[[0, 1], [2, 3, 4]]])  # frames of different sizes: no partner
    assert previous_leaf(ragged).tolist() == [-1] * 5


def test_frame_differences_make_a_clip_mean_see_motion_with_cells_alone():
    """An object moving left to right, and right to left: same frames, reversed order. With positions
    that know the cell but not the frame (frames an unordered set), the clip means are equal without
    differences and differ with them: (change at a cell) x (cell) is motion."""
    torch.manual_seed(0)
    clip = Hierarchy.regular([3, (1, 2)], kinds=["clip", "frame", "patch"], domains=["set", "grid"])
    thing, background = torch.randn(6), torch.zeros(6)
    frames = [torch.stack([thing, background]), torch.stack([background, background]), torch.stack([background, thing])]
    forward, backward = torch.cat(frames), torch.cat(frames[::-1])
    modality = torch.zeros(6, dtype=torch.long)
    for differences, differ in (((), False), (("video",), True)):
        enc = HierarchicalEncoder(
            {"video": 6}, dim=8, depth=0, heads=2, pos_dim=0, content_position=True, difference_modalities=differences
        )
        enc.norm = torch.nn.Identity()
        means = [enc({"video": x}, modality, clip).mean(0) for x in (forward, backward)]
        assert (not torch.allclose(means[0], means[1], atol=1e-6)) == differ
    with pytest.raises(ValueError, match="difference_modalities"):
        HierarchicalEncoder({"video": 6}, dim=8, depth=0, difference_modalities=("audio",))
