"""Names and places of the fictional Riverside and Dales area.

Names are grouped by the UK Core ethnic category of the people who usually carry them, so that a
household's names fit together; every name is representable in ISO 8859-1 because the hospital's
HL7 v2 feed is encoded that way.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Given names: (male, female) per group. British names have an older and a younger cohort.
BRITISH_OLDER = (
    _words("John David Michael Peter Robert William James Brian Kenneth George Richard Anthony Alan "
           "Stephen Christopher Paul Keith Roy Dennis Raymond Thomas Edward Frederick Henry Ronald "
           "Geoffrey Graham Trevor Colin Derek Malcolm Barry"),
    _words("Margaret Patricia Susan Elizabeth Jean Mary Christine Linda Barbara Sandra Carol Janet "
           "Dorothy Joan Maureen Pauline Sheila Valerie Brenda Kathleen Ann Irene Gillian Judith "
           "Jacqueline Deborah Catherine Julie Karen Rosemary"),
)
BRITISH_YOUNGER = (
    _words("Oliver Harry Jack Charlie Jacob Thomas George Oscar James William Noah Leo Alfie Joshua "
           "Freddie Archie Ethan Isaac Alexander Joseph Samuel Daniel Logan Edward Lucas Max Mason "
           "Benjamin Matthew Ryan Liam Callum Jamie Connor Lewis"),
    _words("Olivia Amelia Isla Ava Emily Sophie Grace Mia Poppy Ella Lily Evie Isabella Jessica "
           "Sophia Charlotte Chloe Lucy Freya Daisy Phoebe Holly Ruby Megan Emma Hannah Lauren "
           "Rebecca Katherine Victoria Jennifer Abigail Zoë Siân Bethan"),
)
BRITISH_SURNAMES = _words(
    "Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson Thompson "
    "Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke Jackson Wood Turner Martin "
    "Cooper Hill Ward Morris Moore Clark Lee King Baker Harrison Morgan Allen James Scott Phillips "
    "Watson Davis Parker Price Bennett Young Griffiths Mitchell Kelly Cook Carter Richardson Bailey "
    "Collins Bell Shaw Murphy Miller Cox Richards Marshall Anderson Simpson Ellis Adams Wilkinson "
    "Foster Chapman Powell Webb Rogers Gray Mason Hunt Campbell Matthews Owen Palmer Holmes Mills "
    "Barnes Knight Lloyd Butler Russell Barker Fisher Stevens Jenkins Murray Dixon Harvey Graham "
    "Pearson Fletcher Walsh Gibson Howard Andrews Stewart Elliott Reynolds Saunders Payne Fox Ford "
    "Pearce Day Brooks West Lawrence Cole Atkinson Bradley Spencer Dawson Ball Burton Watts Rose "
    "Booth Perry Ryan Grant Wells Armstrong Francis Rees Hayes Hart Hudson Newman Barrett Webster "
    "Hunter Gregory Carr Lowe Page Marsh Riley Dunn Woods Parsons Berry Stone Reid Holland Hawkins "
    "Harding Porter Newton Oliver Kennedy Williamson Bird Gardner Dean Lane Bates Henderson Parry "
    "Burgess Bishop Walton Nicholson Shepherd Cross Freeman Warren Sutton Yates Hodgson Robson "
    "Curtis Hopkins Harper Coleman Watkins Moss Chambers Griffin Sharp Hardy Wheeler Potter Osborne "
    "Gordon Wallace Jordan Hutchinson Rowe Pritchard Gilbert Willis Higgins Miles Stevenson Hammond "
    "Arnold Buckley Walters Hewitt Barber Nelson Slater Austin Whitehead Mann Frost Lambert Blake "
    "Goodwin Barton Woodward Thomson Cunningham Quinn Baxter Clayton Greenwood Jennings Holt Kemp "
    "Poole Bond Stokes Tucker Fowler Heath Norman Middleton Lawson Banks French Stanley Jarvis")
IRISH = (
    _words("Sean Patrick Liam Conor Declan Ciaran Michael Brendan Eoin Niall Padraig Aidan"),
    _words("Siobhan Niamh Aoife Ciara Mary Bridget Orla Roisin Sinead Grainne Maeve Eileen"),
    _words("Murphy Kelly O'Brien Byrne Ryan O'Connor O'Neill Walsh McCarthy Doyle Gallagher Lynch "
           "Farrell Quinn Brennan Doherty Kavanagh Nolan Sullivan Fitzgerald"),
)
OTHER_WHITE = (
    _words("Piotr Tomasz Pawel Marek Andrei Mihai Ionut Jakub Marco Luca José Nikos Lukas Janis"),
    _words("Anna Agnieszka Katarzyna Magdalena Ioana Elena Maria Andreea Giulia Sofia Renée Ewa"),
    _words("Nowak Kowalski Wisniewski Wojcik Kaminski Popescu Ionescu Constantin Rossi Bianchi "
           "Papadopoulos Kazlauskas Berzins Ferreira Silva Horvath Novak"),
)
INDIAN = (
    _words("Rajesh Sanjay Amit Vikram Arjun Rohan Ravi Deepak Harjit Gurpreet Manpreet Sunil Anil"),
    _words("Priya Anjali Sunita Kavita Neha Pooja Harpreet Jaspreet Meena Asha Deepa Shreya Nisha"),
    _words("Patel Sharma Singh Kaur Gupta Kumar Shah Mehta Joshi Desai Chauhan Bhatt Sandhu Gill "
           "Kapoor Malhotra Mistry Parmar"),
)
PAKISTANI = (
    _words("Muhammad Mohammed Ali Imran Bilal Usman Hamza Adeel Tariq Zubair Asif Omar Hassan"),
    _words("Ayesha Fatima Amna Sana Zainab Maryam Saima Nadia Rabia Hina Aisha Samina Noreen"),
    _words("Khan Ahmed Hussain Ali Akhtar Iqbal Butt Malik Mahmood Rashid Aziz Javed Shah Raza"),
)
BANGLADESHI = (
    _words("Abdul Mohammed Rahim Karim Jamal Shahid Anwar Habib Rafiq Sohel Mizanur"),
    _words("Fatema Nasima Rokeya Shirin Taslima Rahima Farhana Nazma Sultana Jannat"),
    _words("Begum Rahman Miah Uddin Islam Choudhury Hoque Ahmed Ali Hossain Khatun"),
)
CHINESE = (
    _words("Wei Jun Hao Ming Jian Lei Tao Yong Chen Kai"),
    _words("Li Mei Xiu Ying Hui Lan Jing Fang Yan Ling"),
    _words("Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Lin Chan Wong Lam"),
)
AFRICAN = (
    _words("Emeka Chinedu Oluwaseun Tunde Kwame Kofi Samuel Daniel Emmanuel Joseph Ibrahim Abdi Yusuf"),
    _words("Ngozi Chioma Adaeze Funmilayo Abena Ama Grace Blessing Esther Mercy Fatuma Amina Halima"),
    _words("Okafor Okeke Adeyemi Oluwole Mensah Owusu Asante Boateng Abdi Mohamed Nwosu Eze Adebayo "
           "Bello Mwangi Ochieng"),
)
CARIBBEAN = (
    _words("Winston Delroy Leroy Marcus Andre Clive Errol Desmond Tyrone Jerome Lloyd Everton"),
    _words("Marcia Beverley Claudette Hyacinth Sonia Jasmine Paulette Yvonne Shanice Tanisha Donna"),
    _words("Campbell Brown Williams Francis Thomas Clarke Grant Henry Lewis Reid Samuels Bailey "
           "Forbes Powell Gayle"),
)
ARAB_OTHER = (
    _words("Ahmad Khalid Yousef Karim Tariq Samir Nabil Rami Ali Omar"),
    _words("Layla Noor Rania Yasmin Huda Dina Salma Mariam Leila Amira"),
    _words("Haddad Nasser Mansour Khalil Saleh Hamdan Aziz Farouk Darwish Najjar"),
)

# name pools per ethnic category code: (male given, female given, surnames)
POOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "A": (BRITISH_YOUNGER[0], BRITISH_YOUNGER[1], BRITISH_SURNAMES),
    "B": IRISH,
    "C": OTHER_WHITE,
    "H": INDIAN,
    "J": PAKISTANI,
    "K": BANGLADESHI,
    "R": CHINESE,
    "N": AFRICAN,
    "M": CARIBBEAN,
    "G": (BRITISH_YOUNGER[0] + CARIBBEAN[0], BRITISH_YOUNGER[1] + CARIBBEAN[1],
          BRITISH_SURNAMES + CARIBBEAN[2]),
    "S": ARAB_OTHER,
}

NICKNAMES: dict[str, tuple[str, ...]] = {
    "Robert": ("Bob", "Rob", "Bobby"), "William": ("Bill", "Will", "Billy"), "Margaret": ("Peggy", "Maggie"),
    "Elizabeth": ("Liz", "Beth", "Betty"), "James": ("Jim", "Jimmy", "Jamie"), "Richard": ("Dick", "Rich"),
    "Edward": ("Ted", "Eddie"), "Anthony": ("Tony",), "Michael": ("Mike", "Mick"), "Christopher": ("Chris",),
    "Katherine": ("Kate", "Kathy"), "Catherine": ("Cathy", "Kate"), "Patricia": ("Pat", "Trish"),
    "Susan": ("Sue",), "Jennifer": ("Jenny", "Jen"), "Rebecca": ("Becky",), "Alexander": ("Alex",),
    "Thomas": ("Tom", "Tommy"), "Joseph": ("Joe",), "Daniel": ("Dan", "Danny"), "Samuel": ("Sam",),
    "Deborah": ("Debbie",), "Victoria": ("Vicky",), "Dorothy": ("Dot", "Dottie"), "Frederick": ("Fred",),
    "Henry": ("Harry",), "Jacqueline": ("Jackie",), "Barbara": ("Babs",), "Kenneth": ("Ken", "Kenny"),
    "Stephen": ("Steve",), "Peter": ("Pete",), "Matthew": ("Matt",), "Benjamin": ("Ben",),
    "Charlotte": ("Lottie",), "Abigail": ("Abbie",), "Gillian": ("Jill",), "Kathleen": ("Kath",),
    "Raymond": ("Ray",), "Ronald": ("Ron", "Ronnie"), "Geoffrey": ("Geoff",), "Oluwaseun": ("Seun",),
    "Muhammad": ("Mo",), "Mohammed": ("Mo",), "Jessica": ("Jess",), "Isabella": ("Bella",),
    "Dennis": ("Den",), "Malcolm": ("Mal",), "Valerie": ("Val",), "Christine": ("Chris",),
}

MIDDLE_MALE = _words("John James David Michael Peter Robert Edward Thomas George Paul Lee Alan")
MIDDLE_FEMALE = _words("Ann Anne Louise Marie Elizabeth Jane Mary Rose Grace May Claire Victoria")

# Towns, their made-up postcode districts, and streets.
TOWNS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("Riverside", ("RV1", "RV2", "RV3", "RV4", "RV5", "RV6"), 0.45),
    ("Castleford Bridge", ("RV7", "RV8", "RV9"), 0.2),
    ("Millbrook", ("DL23", "DL24"), 0.15),
    ("Dalesby", ("DL20", "DL21", "DL22"), 0.2),
)
STREET_NAMES = _words(
    "Mill Church Station Victoria Park High Queen's King's Albert Grange Manor Chapel Meadow Orchard "
    "Willow Beech Elm Oak Ash Cedar Hawthorn Riverside Bridge Castle Abbey Priory Market Canal Wharf "
    "Mount Hill Valley Dale Moor Fell Brook Springfield Westfield Northgate Southgate Highfield "
    "Fairfield Woodland Heather Clover Primrose Bluebell Foxglove Kingfisher Heron Swallow Ravensworth")
STREET_KINDS = _words("Road Street Lane Avenue Close Way Gardens Terrace Crescent Drive Grove Court")
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"

# People who appear in free text: carers, neighbours, staff.
NEIGHBOUR_NAMES = ("Mrs Ruth Allen", "Mr Frank Doyle", "Mrs Joyce Pickering", "Mr Arif Siddiqui",
                   "Ms Tina Marsh", "Mrs Gwen Lloyd")
WORKERS = ("Maya Brown", "Daniel Okoro", "Sarah Whitfield", "Imogen Pryce", "Tom Hargreaves",
           "Ruksana Begum", "Gareth Lewis")
CONSULTANTS = ("Prof. Ian Rowe", "Dr Niamh O'Connor", "Dr Ahmed Rashid", "Dr Laura Kent",
               "Mr Paul Stenson", "Dr Yetunde Bakare")
CARE_COORDINATORS = ("Harjit Singh", "Alison Pearce", "Kemi Adeyemi", "Rob Fairclough", "Lena Novak")
DISTRICT_NURSES = ("Bethan Williams", "Sue Thornton", "Precious Moyo", "Kate Ellison")
