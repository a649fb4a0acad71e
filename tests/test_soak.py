"""The soak run of `make soak`, for one minute, so its code keeps working."""
import soak


def test_one_minute_soak():
    result = soak.soak(60)
    assert result['lost'] == 0, result
    assert result['passed'], result
