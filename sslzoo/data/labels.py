"""The canonical FER label space, in the Ada-CM paper's class order.

Every data set maps its own label ids onto these ids, so that cross-data-set runs
(train RAF-DB, test CK+) and tables line up. The per-data-set tables live here,
in one visible place.
"""
from __future__ import annotations

FER7: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
FER8: tuple[str, ...] = FER7 + ("contempt",)
CANONICAL = {name: i for i, name in enumerate(FER8)}

# data set's own id -> canonical name (None = dropped)
RAFDB_BASIC = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
AFFECTNET = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust",
             6: "anger", 7: "contempt", 8: None, 9: None, 10: None}  # 8-10: None, Uncertain, Non-Face
CKPLUS = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happiness",
          6: "sadness", 7: "surprise"}
FER2013 = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: "neutral"}
# folder names used by SFEW 2.0 and common image-folder exports (lower-cased on lookup)
FOLDER_NAMES = {
    "angry": "anger", "anger": "anger", "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "happy": "happiness", "happiness": "happiness",
    "neutral": "neutral", "sad": "sadness", "sadness": "sadness", "surprise": "surprise",
    "surprised": "surprise", "contempt": "contempt",
}

MAPPING_TABLES = {"rafdb": RAFDB_BASIC, "affectnet": AFFECTNET, "ckplus": CKPLUS,
                  "fer2013": FER2013, "sfew/folder": FOLDER_NAMES}


def canonical_id(name: str) -> int:
    return CANONICAL[name]
