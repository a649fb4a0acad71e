"""Unit tests of the message property declarations, and of the status each
kind of publish failure answers."""
import decimal

import pika
import pytest

import statelessd
import statelessd_amqp

USER = 'guest'


def form_properties(pairs, user=USER):
    fields, headers = statelessd.message_fields(pairs)
    return statelessd.message_properties(fields, headers, user)


def json_properties(properties, user=USER):
    return statelessd.message_properties(
        statelessd.json_property_fields(properties), {}, user)


def field_error(build, *args):
    with pytest.raises(statelessd.FieldError) as caught:
        build(*args)
    return caught.value


def api_document(properties):
    return {'routing_key': 'rk', 'payload': 'p', 'properties': properties}


# -- the declarations ---------------------------------------------------------

def test_every_declared_property_is_a_basic_property():
    names = [prop.name for prop in statelessd.PROPERTIES.declared]
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(pika.BasicProperties(), name)


def test_aliases_name_no_declared_property():
    declared = statelessd.PROPERTIES.by_name
    for alias, name in statelessd.PROPERTIES.aliases.items():
        assert alias not in declared and name in declared


def test_expire_is_a_form_alias_only():
    assert form_properties([('expire', b'60000')]) == {'expiration': '60000'}
    error = field_error(json_properties, {'expire': 60000})
    assert error.reason == 'field expire is not an AMQP basic property'


@pytest.mark.parametrize('form_value, json_value, expected', [
    (b'app', 'app', 'app'),
    ('\u00e9'.encode('utf-8') * 127 + b'x', '\u00e9' * 127 + 'x',
     '\u00e9' * 127 + 'x'),
])
def test_short_text_is_the_same_in_both_shapes(form_value, json_value,
                                               expected):
    assert form_properties([('app_id', form_value)]) == \
        json_properties({'app_id': json_value}) == {'app_id': expected}


def test_short_text_longer_than_a_short_string_is_400():
    for error in (field_error(form_properties, [('type', b'x' * 256)]),
                  field_error(json_properties, {'type': 'x' * 256})):
        assert error.reason == 'field type is longer than 255 bytes'


def test_short_text_must_be_utf8_or_a_json_string():
    error = field_error(form_properties, [('reply_to', b'\xff')])
    assert error.reason == 'field reply_to is not valid UTF-8'
    error = field_error(json_properties, {'reply_to': 5})
    assert error.reason == 'field reply_to must be a string'


def test_user_id_must_be_the_authenticated_user():
    assert form_properties([('user_id', b'guest')]) == {'user_id': 'guest'}
    error = field_error(json_properties, {'user_id': 'other'})
    assert error.reason == ("field user_id must be the authenticated user "
                            "'guest', RabbitMQ rejects any other")


@pytest.mark.parametrize('name, low, high', [
    ('delivery_mode', 1, 2), ('priority', 0, 255),
    ('timestamp', 0, 2 ** 63 - 1)])
def test_whole_numbers_hold_their_range(name, low, high):
    for number in (low, high):
        assert form_properties([(name, str(number).encode())]) == \
            json_properties({name: number}) == \
            json_properties({name: str(number)}) == {name: number}
    for number in (low - 1, high + 1):
        error = field_error(form_properties, [(name, str(number).encode())])
        assert error.reason == ('field %s must be a whole number from %d to '
                                '%d, not %r' % (name, low, high, str(number)))


@pytest.mark.parametrize('value', [
    b'', b'-1', b'+1', b'1.0', b'1_0', b'\xc2\xb2', b'0x1', b'1' * 5000])
def test_whole_numbers_are_ascii_digits(value):
    error = field_error(form_properties, [('priority', value)])
    assert error.reason.startswith('field priority must be a whole number '
                                   'from 0 to 255, not ')


def test_whole_numbers_may_have_spaces_and_leading_zeros():
    assert form_properties([('priority', b' 0007 ')]) == {'priority': 7}
    assert form_properties([('priority', b'0' * 5000 + b'9')]) == \
        {'priority': 9}


@pytest.mark.parametrize('value', [True, 1.5, None, [1], {'n': 1}])
def test_json_whole_numbers_are_numbers_or_strings(value):
    if isinstance(value, float):
        value = decimal.Decimal(value)
    error = field_error(json_properties, {'priority': value})
    assert error.reason == 'field priority must be a whole number'


def test_expiration_is_milliseconds_as_text():
    assert json_properties({'expiration': 2 ** 32 - 1}) == \
        {'expiration': str(2 ** 32 - 1)}
    error = field_error(form_properties, [('expiration', b'4294967296')])
    assert 'from 0 to 4294967295' in error.reason


def test_headers_are_the_same_in_both_shapes():
    assert form_properties([('headers', b'{"a": 1, "d": 1.5}'),
                            ('headers[b]', b'two')]) == \
        json_properties({'headers': {'a': 1, 'd': decimal.Decimal('1.5'),
                                     'b': 'two'}}) == \
        {'headers': {'a': 1, 'd': decimal.Decimal('1.5'), 'b': 'two'}}


def test_headers_must_be_an_object_with_short_names():
    assert field_error(form_properties, [('headers', b'[1]')]).reason == \
        'field headers must be a JSON object'
    assert field_error(json_properties, {'headers': [1]}).reason == \
        'field headers must be a JSON object'
    assert field_error(json_properties, {'headers': {'n' * 256: 1}}).reason \
        == 'field headers has a name longer than 255 bytes'


def test_empty_headers_set_no_property():
    assert form_properties([('headers', b'{}')]) == {}
    assert json_properties({'headers': {}}) == {}


def test_json_properties_errors_name_the_properties_object():
    error = field_error(statelessd.api_message, 'x',
                        api_document({'priority': 'high'}), USER)
    assert error.reason == ("field properties.priority must be a whole "
                            "number from 0 to 255, not 'high'")


# -- adding a property --------------------------------------------------------

@pytest.fixture
def cluster_id_declared(monkeypatch):
    """cluster_id, an AMQP property statelessd does not offer, declared
    with one more line, as a new property would be."""
    monkeypatch.setattr(statelessd, 'PROPERTIES', statelessd.MessageProperties(
        *statelessd.PROPERTIES.declared,
        statelessd.Property('cluster_id', statelessd.ShortText(),
                            aliases=('cluster',))))


def form_publish(body):
    """What a form publish makes of a urlencoded body."""
    pairs = statelessd.form_fields(statelessd.URLENCODED, body)
    fields, headers = statelessd.message_fields(pairs)
    return statelessd.form_message('x', 'rk', fields, headers, USER, False)


def test_an_undeclared_property_is_not_published():
    assert form_publish(b'body=b&cluster_id=c').properties.cluster_id is None
    error = field_error(statelessd.api_message, 'x',
                        api_document({'cluster_id': 'c'}), USER)
    assert error.reason == ('field properties.cluster_id is not an AMQP '
                            'basic property')


@pytest.mark.usefixtures('cluster_id_declared')
def test_one_declaration_adds_a_property_to_every_shape():
    for body in (b'body=b&cluster_id=c', b'body=b&cluster=c',
                 b'body=b&cluster-id=c'):
        message = form_publish(body)
        assert (message.body, message.properties.cluster_id) == (b'b', 'c')
    message = statelessd.api_message('x', api_document({'cluster_id': 'c'}),
                                     USER)
    assert message.properties.cluster_id == 'c'
    batch = statelessd.form_batch(statelessd.form_fields(
        statelessd.URLENCODED, b'messages[0][cluster_id]=c'), 10)
    message = statelessd.batch_form_message('x', 'rk', batch[0], USER, False)
    assert message.properties.cluster_id == 'c'


@pytest.mark.usefixtures('cluster_id_declared')
def test_a_declared_property_is_checked_by_its_kind():
    error = field_error(form_publish, b'cluster_id=' + b'c' * 256)
    assert error.reason == 'field cluster_id is longer than 255 bytes'
    error = field_error(statelessd.api_message, 'x',
                        api_document({'cluster_id': 1}), USER)
    assert error.reason == 'field properties.cluster_id must be a string'


def test_messages_with_the_same_short_fields_share_their_properties():
    first = form_publish(b'body=1&content_type=text/plain&headers[x-a]=b')
    again = form_publish(b'content_type=text/plain&body=2&headers[x-a]=b')
    other = form_publish(b'body=3&content_type=text/html&headers[x-a]=b')
    assert first.properties is again.properties
    assert other.properties is not first.properties
    assert (other.properties.content_type, other.properties.headers) == \
        ('text/html', {'x-a': 'b'})
    large = b'body=4&headers[x-a]=' + b'b' * 2000
    assert form_publish(large).properties is not \
        form_publish(large).properties
    assert form_publish(large).properties.headers == {'x-a': 'b' * 2000}
    document = api_document({'headers': {'x-n': 1}, 'priority': 3})
    message = statelessd.api_message('x', document, USER)
    assert (message.properties.headers, message.properties.priority) == \
        ({'x-n': 1}, 3)
    assert statelessd.api_message('x', document, USER).properties is not \
        message.properties


def test_shared_properties_are_checked_for_each_user():
    fields = {'user_id': b'guest'}
    assert statelessd.form_properties(fields, {}, 'guest').user_id == 'guest'
    for _ in range(2):
        error = field_error(statelessd.form_properties, fields, {}, 'other')
        assert error.reason == ("field user_id must be the authenticated "
                                "user 'other', RabbitMQ rejects any other")
        error = field_error(statelessd.form_properties, {'priority': b'256'},
                            {}, 'guest')
        assert error.reason == ("field priority must be a whole number "
                                "from 0 to 255, not '256'")


# -- publish failures ---------------------------------------------------------

def publish_errors(parent=statelessd_amqp.PublishError):
    """Every kind of PublishError statelessd_amqp defines, at any depth."""
    for kind in parent.__subclasses__():
        if kind.__module__ == statelessd_amqp.__name__:
            yield kind
        yield from publish_errors(kind)


def test_there_are_publish_errors_to_check():
    assert statelessd_amqp.Blocked in set(publish_errors())


@pytest.mark.parametrize('kind', sorted(publish_errors(),
                                        key=lambda kind: kind.__name__))
def test_every_publish_error_has_a_deliberate_status(kind):
    assert kind in statelessd.ERROR_STATUS, (
        '%s answers as its parent does; give it its own status in '
        'ERROR_STATUS' % kind.__name__)
    assert 400 <= statelessd.ERROR_STATUS[kind] < 600


def test_a_refined_publish_error_answers_as_its_parent():
    class StillBlocked(statelessd_amqp.Blocked):
        pass

    error = statelessd.publish_error(StillBlocked('still blocked'))
    assert (error.status, error.reason, error.headers) == \
        (503, 'still blocked', {'Retry-After': str(statelessd.RETRY_AFTER)})

    class PasswordExpired(statelessd_amqp.LoginRefused):
        pass

    error = statelessd.publish_error(PasswordExpired('expired'))
    assert error.status == 401 and 'WWW-Authenticate' in error.headers


def test_an_unmapped_publish_error_is_a_500_not_a_crash():
    class Unforeseen(statelessd_amqp.PublishError):
        pass

    assert statelessd.failure(Unforeseen('what happened')) == \
        {'status': 500, 'reason': 'what happened'}
