import re

from setuptools import setup

with open('statelessd.py') as handle:
    VERSION = re.search(r"^__version__ = '([^']+)'", handle.read(), re.M)[1]

with open('README.md') as handle:
    LONG_DESCRIPTION = handle.read()

setup(
    name='statelessd',
    version=VERSION,
    description='Stateless HTTP to AMQP publishing gateway',
    long_description=LONG_DESCRIPTION,
    long_description_content_type='text/markdown',
    py_modules=['statelessd', 'statelessd_amqp', 'statelessd_stats'],
    install_requires=['pika>=1.2,<2', 'PyYAML>=5.1'],
    python_requires='>=3.8',
    entry_points={'console_scripts': ['statelessd=statelessd:main']},
    license='BSD',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: System :: Networking',
    ],
)
