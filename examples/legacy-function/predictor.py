# Function-style predictor (Cortex's older interface): init() once, predict() per request.
# A hand-written decision stump keeps this example free of dependencies.

thresholds = {}


def init(model_path, metadata):
    thresholds["setosa_below"] = 2.5
    thresholds["versicolor_below"] = 4.8


def predict(sample, metadata):
    labels = metadata["labels"]
    petal_length = float(sample["petal_length"])
    if petal_length < thresholds["setosa_below"]:
        return labels[0]
    if petal_length < thresholds["versicolor_below"]:
        return labels[1]
    return labels[2]
