"""nightshiftd: the service that supervises the training job."""
