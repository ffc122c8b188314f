import joblib

labels = ["setosa", "versicolor", "virginica"]


class PythonPredictor:
    def __init__(self, config):
        # The project folder is the working directory, so relative paths work.
        self.model = joblib.load(config["model"])

    def predict(self, payload):
        measurements = [
            [
                payload["sepal_length"],
                payload["sepal_width"],
                payload["petal_length"],
                payload["petal_width"],
            ]
        ]
        label_id = int(self.model.predict(measurements)[0])
        return labels[label_id]
