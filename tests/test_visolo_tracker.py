"""VISOLO host inference (`visjax.models.visolo.tracker`) against a NumPy port of the official eval loop of
`Visolo.forward` with `getTestResultV4`, `getSegMaskV5`, `matrix_nms`, `getTrackInfo` and `getAverageCat`
(float32 as torch, dense `[K, N, H, W]` instance tensors as the official code), on random sequences built so that
every branch runs: matches, lost candidates re-found, empty frames, new instances."""

import copy

import numpy as np
import pytest

from visjax.models.visolo import tracker as tracker_lib

S1, S2, C, H, W, D = 4, 6, 5, 16, 24, 8
S = S1 * S2


# ------------------------------------------------------------------------------------ NumPy port of the official code

def _argsort_desc(x):
  """torch.argsort(descending=True): NaN first; ties in index order (torch CPU sorts stably here)."""
  keyed = sorted(range(len(x)), key=lambda i: (0, 0.) if np.isnan(x[i]) else (1, -float(x[i])))
  return np.asarray(keyed, int)


class OfficialPort:
  """`Visolo` eval branch; `track_fn(a, b)` stands for `sigmoid(Tracking_branch(a, b))[0, 0]`."""

  def __init__(self, cfg, track_fn):
    self.cfg = cfg
    self.track = track_fn
    self.events = {'candidate_match': 0, 'empty_frame': 0, 'greedy_match': 0}

  def matrix_nms(self, seg_masks, cate_labels, cate_scores):
    n = len(cate_labels)
    sum_masks = seg_masks.sum((1, 2)).astype(np.float32)
    m = seg_masks.reshape(n, -1).astype(np.float32)
    inter = m @ m.T
    sx = np.broadcast_to(sum_masks, (n, n))
    with np.errstate(divide='ignore', invalid='ignore'):
      iou = np.triu(inter / (sx + sx.T - inter), 1)
    lx = np.broadcast_to(cate_labels, (n, n))
    label_matrix = np.triu((lx == lx.T).astype(np.float32), 1)
    comp = np.broadcast_to((iou * label_matrix).max(0), (n, n)).T
    decay_iou = iou * label_matrix
    decay = np.exp(-1 * self.cfg.sigma * decay_iou**2) / np.exp(-1 * self.cfg.sigma * comp**2)
    return (cate_scores * decay.min(0)).astype(np.float32)

  def get_seg_mask(self, pred_cats, mask_probs, grid_weight):
    cat_scores = pred_cats.reshape(-1, S).T.copy()
    cat_scores_ori = cat_scores.copy()
    cat_labels = cat_scores.argmax(1)
    cat_scores = cat_scores.max(1)
    if grid_weight is not None:
      cat_scores = cat_scores * grid_weight
    cat_scores[cat_scores < self.cfg.score_thr] = 0.
    valid_ind = np.nonzero(cat_scores)[0]
    if valid_ind.sum() == 0:
      return None
    seg_preds = mask_probs[valid_ind]
    seg_masks = (seg_preds > self.cfg.mask_thr).astype(np.float32)
    cat_scores, cat_labels = cat_scores[valid_ind], cat_labels[valid_ind]
    sum_masks = seg_masks.sum((1, 2))
    with np.errstate(divide='ignore', invalid='ignore'):
      cat_scores = cat_scores * ((seg_preds * seg_masks).sum((1, 2)) / sum_masks)
    sort_ind = _argsort_desc(cat_scores)[:self.cfg.nms_pre]
    seg_masks, cat_scores, cat_labels, valid_ind = (a[sort_ind] for a in (seg_masks, cat_scores, cat_labels,
                                                                          valid_ind))
    cat_scores = self.matrix_nms(seg_masks, cat_labels, cat_scores)
    keep = cat_scores >= self.cfg.update_thr
    if keep.sum() == 0:
      return None
    seg_masks, cat_scores, cat_labels, valid_ind = (a[keep] for a in (seg_masks, cat_scores, cat_labels, valid_ind))
    sort_ind = _argsort_desc(cat_scores)[:100]
    seg_masks, cat_scores, cat_labels, valid_ind = (a[sort_ind] for a in (seg_masks, cat_scores, cat_labels,
                                                                          valid_ind))
    cat_scores_ori = cat_scores_ori[valid_ind]
    seg_masks = seg_masks.copy()
    for i in range(len(valid_ind) - 1):
      if seg_masks[i].sum() == 0:
        continue
      for j in range(i + 1, len(valid_ind)):
        with np.errstate(divide='ignore', invalid='ignore'):
          if (seg_masks[i] * seg_masks[j]).sum() / seg_masks[j].sum() > 0.5:
            seg_masks[j] = 0
    final = seg_masks.sum((1, 2)) > 0
    return seg_masks[final], cat_labels[final], cat_scores[final], cat_scores_ori[final], valid_ind[final]

  def get_track_info(self, tra_candidates, tra_feature, idxs, valid_ind):
    inst_idx = [-1 for _ in range(len(idxs))]
    if len(tra_candidates) == 0:
      return inst_idx, tra_candidates
    k1 = len(valid_ind)
    check = []
    for c in range(len(tra_candidates) - 1, -1, -1):
      tra_check = []
      cand = tra_candidates[c]
      k0 = len(cand['valid_idx'])
      valid_tra = self.track(cand['tra_feature'], tra_feature)[cand['valid_idx'], :][:, valid_ind]
      for i in range(k1):
        if inst_idx[i] == -1:
          for ind in _argsort_desc(valid_tra[:, i]):
            if valid_tra[int(ind), i] >= self.cfg.tracking_thr and int(ind) not in tra_check:
              inst_idx[i] = cand['idx_mapping'][int(ind)]
              tra_check.append(int(ind))
              self.events['candidate_match'] += 1
              break
      keep = [x for x in range(k0) if x not in tra_check]
      cand['valid_idx'] = cand['valid_idx'][keep]
      cand['idx_mapping'] = [k for idx, k in enumerate(cand['idx_mapping']) if idx not in tra_check]
      if len(cand['idx_mapping']) == 0:
        check.append(c)
      if -1 not in inst_idx:
        break
    return inst_idx, [k for idx, k in enumerate(tra_candidates) if idx not in check]

  def _new(self, st, N, f_idx, res, i):
    masks, labels, scores, ori, _ = res
    inst = dict(masks=np.zeros((1, N, H, W), np.float32), cats=np.full((1, N), -1), scores=np.zeros((1, N), np.float32),
                ori=np.zeros((1, N, C), np.float32))
    inst['masks'][0, f_idx], inst['cats'][0, f_idx], inst['scores'][0, f_idx], inst['ori'][0, f_idx] = (
        masks[i], labels[i], scores[i], ori[i])
    for k in inst:
      st[k] = inst[k] if st[k] is None else np.concatenate([st[k], inst[k]])

  def _set(self, st, k, f_idx, res, i):
    masks, labels, scores, ori, _ = res
    if st['masks'][k, f_idx].sum() != 0:
      raise RuntimeError('Error add mask in inst track!!!')
    st['masks'][k, f_idx], st['cats'][k, f_idx], st['scores'][k, f_idx], st['ori'][k, f_idx] = (
        masks[i], labels[i], scores[i], ori[i])

  def get_test_result(self, frame, n_pred_tra, grid_weight, tra_feature, N, f_idx, st):
    """`getTestResultV4`; `st` holds inst tensors, f0_result, valid_tra, valid_ind_map_to_inst, tra_candidates."""
    pre_check, pre_map = None, None
    count = lambda: 0 if st['masks'] is None else len(st['masks'])
    if st['f0_result'] is None:
      res = st['f0_result'] = self.get_seg_mask(frame['cats'], frame['mask_probs'], grid_weight)
      if res is None:
        self.events['empty_frame'] += 1
        return None, None, None
      valid_ind = res[4]
      if f_idx != N - 1:
        st['valid_tra'] = n_pred_tra[valid_ind, :]
      inst_num = count()
      inst_idx, st['cands'] = self.get_track_info(st['cands'], tra_feature, list(range(len(valid_ind))), valid_ind)
      map_num = 0
      for i in range(len(valid_ind)):
        if inst_idx[i] != -1:
          self._set(st, inst_idx[i], f_idx, res, i)
          st['map'].append(inst_idx[i])
        else:
          self._new(st, N, f_idx, res, i)
          st['map'].append(inst_num + map_num)
          map_num += 1
      return None, None, valid_ind
    res = st['f0_result'] = self.get_seg_mask(frame['cats'], frame['mask_probs'], grid_weight)
    if res is None:
      self.events['empty_frame'] += 1
      pre_check = np.zeros(len(st['valid_tra']))
      pre_map = copy.deepcopy(st['map'])
      st['valid_tra'], st['map'] = None, []
      return pre_check, pre_map, None
    valid_ind = res[4]
    k1 = len(valid_ind)
    no_match, temp_map = [], [0] * k1
    pre_check = np.zeros(len(st['valid_tra']))
    inst_num = count()
    valid_tra = st['valid_tra'][:, valid_ind]
    for i in range(k1):
      matched = False
      for ind in _argsort_desc(valid_tra[:, i]):
        k = st['map'][int(ind)]
        if st['masks'][k][f_idx].sum() == 0 and valid_tra[int(ind), i] >= self.cfg.tracking_thr:
          self._set(st, k, f_idx, res, i)
          temp_map[i] = k
          pre_check[int(ind)] = 1
          matched = True
          self.events['greedy_match'] += 1
          break
      if not matched:
        no_match.append(i)
    inst_idx, st['cands'] = self.get_track_info(st['cands'], tra_feature, no_match, valid_ind[no_match])
    map_num = 0
    for i, ind in enumerate(no_match):
      if inst_idx[i] != -1:
        self._set(st, inst_idx[i], f_idx, res, ind)
        temp_map[ind] = inst_idx[i]
      else:
        self._new(st, N, f_idx, res, ind)
        temp_map[ind] = inst_num + map_num
        map_num += 1
    pre_map = [k for idx, k in enumerate(st['map']) if pre_check[idx] == 0]
    st['map'] = temp_map
    if f_idx != N - 1:
      st['valid_tra'] = n_pred_tra[valid_ind, :]
    return pre_check, pre_map, valid_ind

  def grid_weight(self, pre, frame, post):
    if pre is None:
      return self.track(frame, post).max(1)
    if post is None:
      return self.track(frame, pre).max(1)
    return ((self.track(frame, pre).max(1) + self.track(frame, post).max(1)) / np.float32(2)).astype(np.float32)

  def run(self, frames):
    """`frames`: list of dicts {'cats' [C, S1, S2], 'mask_probs' [S, H, W], 'feature'}; N >= 3."""
    N = len(frames)
    st = dict(masks=None, cats=None, scores=None, ori=None, f0_result=None, valid_tra=None, map=[], cands=[])
    m = [frames[0]['feature']]
    tra = lambda a, b: self.track(frames[a]['feature'], frames[b]['feature'])
    self.get_test_result(frames[0], tra(0, 1), None, m[-1], N, 0, st)
    f0_valid_ind = st['f0_result'][4] if st['f0_result'] is not None else None
    m.append(frames[1]['feature'])
    gw = self.grid_weight(m[-2], m[-1], None)
    pre_check, pre_map, f1_valid_ind = self.get_test_result(frames[1], tra(1, 2), gw, m[-1], N, 1, st)
    if pre_check is not None and (pre_check == 0).sum() > 0:
      st['cands'].append(dict(f_idx=0, valid_idx=f0_valid_ind[pre_check == 0], tra_feature=m[-2],
                              idx_mapping=pre_map))
    m.append(frames[2]['feature'])
    f0_valid_ind = f1_valid_ind
    for n in range(3, N + 1):
      gw = self.grid_weight(m[-2], m[-1], m[-3])
      if n == N:
        self.get_test_result(frames[n - 1], None, gw, m[-1], N, n - 1, st)
        continue
      pre_check, pre_map, f1_valid_ind = self.get_test_result(frames[n - 1], tra(n - 1, n), gw, m[-1], N, n - 1, st)
      if pre_check is not None and (pre_check == 0).sum() > 0:
        st['cands'].append(dict(f_idx=n - 2, valid_idx=f0_valid_ind[pre_check == 0], tra_feature=m[-2],
                                idx_mapping=pre_map))
      m = m + [frames[n]['feature']] if n % 5 == 2 else m[:-2] + m[-1:] + [frames[n]['feature']]
      f0_valid_ind = f1_valid_ind
    if st['masks'] is None:
      return None
    ori = st['ori']
    valid = np.count_nonzero(ori.sum(2), axis=1).reshape(-1, 1)
    avg = ori.sum(1) / valid.astype(np.float32)
    return dict(masks=st['masks'] > 0, scores=st['scores'], avg=avg, labels=avg.argmax(1))


# -------------------------------------------------------------------------------------------------- random videos

def _video(seed, n_frames, n_objects=4):
  """Objects that move slowly over the grid and sometimes vanish; tracking features identify objects, so the
  tracking scores are high for the same object and low otherwise (with noise)."""
  rng = np.random.default_rng(seed)
  ids = rng.normal(size=(n_objects + 1, D)).astype(np.float32)  # row n_objects: background
  pos = rng.uniform([0, 0], [S1, S2], size=(n_objects, 2))
  yy, xx = np.mgrid[:H, :W]
  frames = []
  for t in range(n_frames):
    pos = np.clip(pos + rng.normal(scale=0.4, size=pos.shape), 0, [S1 - 0.01, S2 - 0.01])
    visible = rng.random(n_objects) > (0.6 if t % 4 == 3 else 0.15)
    cell_obj = np.full(S, n_objects)
    cats = rng.uniform(0, 0.08, size=(C, S)).astype(np.float32)
    mask_probs = np.zeros((S, H, W), np.float32)
    for k in np.nonzero(visible)[0]:
      cell = int(pos[k, 0]) * S2 + int(pos[k, 1])
      cell_obj[cell] = k
      cats[k % C, cell] = rng.uniform(0.3, 1.)
      cy, cx = pos[k, 0] / S1 * H, pos[k, 1] / S2 * W
      blob = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * rng.uniform(4, 12)))
      mask_probs[cell] = blob
      for nb in (cell - 1, cell + 1):  # neighbouring cells predict similar masks: NMS and overlap removal act
        if 0 <= nb < S and rng.random() < 0.6:
          cats[k % C, nb] = rng.uniform(0.1, 0.5)
          mask_probs[nb] = np.clip(blob * rng.uniform(0.7, 1.3) + rng.normal(scale=0.05, size=blob.shape), 0, 1)
    if t == 5:
      cats[:] = 0.01  # a frame without any detection
    if t == 8:  # two passing cells with empty masks: NaN Matrix NMS drops the frame (official quirk)
      empty = [c for c in range(S) if cell_obj[c] == n_objects and not mask_probs[c].any()][:2]
      cats[0, empty] = 0.5
    feature = ids[cell_obj] + rng.normal(scale=0.3, size=(S, D)).astype(np.float32)
    frames.append(dict(cats=cats.reshape(C, S1, S2), mask_probs=mask_probs.astype(np.float32), feature=feature))
  return frames


def _track_fn(a, b):
  return (1. / (1. + np.exp(-(a @ b.T - 2.)))).astype(np.float32)


@pytest.mark.parametrize('seed,n_frames', [(0, 12), (1, 9), (2, 15), (3, 3)])
def test_tracker_matches_official_loop(seed, n_frames):
  cfg = tracker_lib.TrackerConfig(num_classes=C)
  frames = _video(seed, n_frames)
  official = OfficialPort(cfg, _track_fn)
  want = official.run(copy.deepcopy(frames))
  trk = tracker_lib.VisoloTracker(cfg, _track_fn)
  for f in frames:
    trk.add_frame(f['cats'].reshape(C, S).T, lambda cells, p=f['mask_probs']: p[cells], f['feature'])
  got = trk.finish()
  assert want is not None and len(got) == len(want['masks'])
  for k, track in enumerate(got):
    assert track['track_id'] == k
    for t in range(n_frames):
      present = want['masks'][k, t].any()
      assert (track['masks'][t] is not None) == present, (k, t)
      if present:
        np.testing.assert_array_equal(track['masks'][t], want['masks'][k, t])
        assert track['frame_scores'][t] == pytest.approx(float(want['scores'][k, t]), rel=1e-6)
    np.testing.assert_allclose(track['class_scores'], want['avg'][k], rtol=1e-6)
    assert track['label'] == want['labels'][k]
  if n_frames >= 9:  # every branch ran; frames 5 (nothing passes) and 8 (NaN Matrix NMS) are dropped
    assert all(v > 0 for v in official.events.values()), official.events
    assert all(track['masks'][5] is None and track['masks'][8] is None for track in got)
    assert sum(track['masks'][7] is not None for track in got) > 0


def test_memory_schedule():
  """Frame 0, every 5th frame from 5 (appended at 7, 12, ...), and the last two; freed slots are reused."""
  schedule = tracker_lib.MemorySchedule()
  seen = []
  for t in range(18):
    slot = schedule.push(t)
    seen.append(list(schedule.frames))
    assert len(set(schedule.slots)) == len(schedule.slots) and slot == schedule.slots[-1]
  assert seen[2] == [0, 1, 2] and seen[3] == [0, 2, 3] and seen[6] == [0, 5, 6] and seen[7] == [0, 5, 6, 7]
  assert seen[11] == [0, 5, 10, 11] and seen[12] == [0, 5, 10, 11, 12] and seen[17] == [0, 5, 10, 15, 16, 17]
  assert tracker_lib.MemorySchedule.capacity(18) == 6 and tracker_lib.MemorySchedule.capacity(2) == 2


def test_segment_frame_quirks():
  cfg = tracker_lib.TrackerConfig(num_classes=2)
  probs = np.zeros((S, 2), np.float32)
  probs[0, 1] = 0.9  # only cell 0 passes: the official code treats the frame as empty
  masks = np.zeros((S, H, W), np.float32)
  masks[0, :4, :4] = 0.9
  assert tracker_lib.segment_frame(probs, lambda c: masks[c], None, cfg) is None
  probs[3, 0] = probs[7, 0] = probs[9, 1] = 0.8  # cells 3 and 7 have empty masks: NaN scores, NMS all NaN
  masks[9, 4:8, :] = 0.8
  assert tracker_lib.segment_frame(probs, lambda c: masks[c], None, cfg) is None
  masks[7, 8:, :] = 0.7
  dets = tracker_lib.segment_frame(probs, lambda c: masks[c], None, cfg)
  assert list(dets.cells) == [0, 9, 7]  # ordered by score x mean mask prob
  np.testing.assert_allclose(dets.scores, [0.81, 0.64, 0.56], rtol=1e-5)
  assert list(tracker_lib.argsort_desc(np.array([0.2, np.nan, 0.5, 0.5]))) == [1, 2, 3, 0]
