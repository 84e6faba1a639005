-- MLflow's users and permissions (stages/registry/basic_auth.ini) live in their own database, apart
-- from the tracking and registry tables; postgres runs this once, when it creates the cluster.
CREATE DATABASE mlflow_auth OWNER mlflow;
