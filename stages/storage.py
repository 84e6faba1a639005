"""Preflight of DVC's `storage` remote: one clear line when it cannot be used, before `dvc pull`/`push`.

Against an unreachable endpoint botocore retries for the better part of a minute and DVC then prints a
traceback-shaped error; with bad keys it says "Forbidden" without naming the remote or the fix. This
asks the bucket once, with short timeouts and no retries, and names which of the causes it is. The
settings are DVC's own (.dvc/config plus `dvc remote modify --local`), then botocore's environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE), as `dvc push` reads them.
"""

from __future__ import annotations

import sys
from urllib.parse import urlparse

from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.session import get_session
from dvc.repo import Repo

REMOTE = "storage"
BAD_CREDENTIALS = {"403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden"}
NO_BUCKET = {"404", "NoSuchBucket"}


def check(remote: dict) -> str | None:
    """None when the remote's bucket answers with these credentials, else the one line that says why."""
    bucket = urlparse(remote["url"]).netloc
    # botocore itself, which dvc[s3] installs (boto3 comes only with the dev tools, not into the image).
    client = get_session().create_client(
        "s3",
        endpoint_url=remote.get("endpointurl"),
        aws_access_key_id=remote.get("access_key_id"),
        aws_secret_access_key=remote.get("secret_access_key"),
        config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}),
    )
    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except (EndpointConnectionError, ConnectionError) as error:
        return f"storage: cannot reach {endpoint} ({type(error).__name__}): set AWS_ENDPOINT_URL or `dvc remote modify --local {REMOTE} endpointurl URL`"
    except NoCredentialsError:
        return f"storage: no S3 credentials for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in BAD_CREDENTIALS:
            return f"storage: {endpoint} refused the credentials for bucket {bucket!r} ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        if code in NO_BUCKET:
            return (
                f"storage: {endpoint} has no bucket {bucket!r}: create it (compose's storage-bucket job does)"
            )
        return f"storage: {endpoint} answered {code} for bucket {bucket!r}"
    return None


def main() -> int:
    remote = Repo().config["remote"][REMOTE]
    problem = check(remote)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"storage: {remote['url']} is reachable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
