import FedModel
