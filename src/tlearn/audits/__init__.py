"""Knowing the data and the backbone before training: `tlearn audit` and `tlearn select`.

* `audits.folder.audit_folder`: likely label errors (confident learning on out-of-fold probabilities),
  near-duplicates, outliers and hard-to-separate classes, written as audit.json, audit.html and review.csv.
* `audits.review.apply_review`: a reviewed list applied to a data source (labels changed, images dropped;
  no file touched), for `tlearn train --review`.
* `audits.select.select_backbones` / `best_backbone`: candidate backbones ranked by cross-validated
  linear-probe accuracy, LogME and k-NN; the winner for `tlearn train --backbone best`.

Everything here works on cached embeddings and never imports torch unless a backbone must run. The folder is
`audits`, not `audit`: a subpackage named like the public function `tlearn.audit` would replace it as an
attribute of `tlearn` the moment it is imported.
"""
