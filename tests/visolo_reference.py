"""NumPy port of the official VISOLO eval loop (SuHoHan95/VISOLO `projects/VISOLO/visolo/visolo.py`: the eval branch
of `Visolo.forward` with `getTestResultV4`, `getSegMaskV5`, `matrix_nms`, `getTrackInfo`, `getGridWeight`,
`getAverageCat`), float32 as torch, dense `[K, N, H, W]` instance tensors as the official code. Used by the tracker and
predictor tests; imports nothing from visjax."""

import copy

import numpy as np


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
    cat_scores = pred_cats.reshape(pred_cats.shape[0], -1).T.copy()
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
    inst = dict(masks=np.zeros((1, N) + masks.shape[1:], np.float32), cats=np.full((1, N), -1),
                scores=np.zeros((1, N), np.float32), ori=np.zeros((1, N, ori.shape[1]), np.float32))
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
